import math

import pytest
import torch

from qatlab.quant import cosine_similarity, error_report, max_abs_error, mse, sqnr_db


def test_metrics_values():
    x = torch.tensor([1.0, -1.0, 2.0, -2.0])
    y = x + torch.tensor([0.1, -0.1, 0.1, -0.1])
    assert mse(x, y) == pytest.approx(0.01)
    assert max_abs_error(x, y) == pytest.approx(0.1, rel=1e-6)
    assert sqnr_db(x, y) == pytest.approx(10 * math.log10(10 / 0.04), rel=1e-5)
    assert sqnr_db(x, x) == math.inf
    assert cosine_similarity(x, 2 * x) == pytest.approx(1.0)
    assert set(error_report(x, y)) == {"sqnr_db", "mse", "max_abs_error", "cosine"}


def test_shape_mismatch_is_an_error():
    with pytest.raises(ValueError, match="shape"):
        mse(torch.zeros(3), torch.zeros(4))
