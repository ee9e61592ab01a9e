"""benchmarks/qat_gpu.py runs (on the CPU, as a smoke test of the code a GPU run uses)."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "qat_gpu.py"


def _load():
    spec = importlib.util.spec_from_file_location("qat_gpu", SCRIPT)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.mark.slow  # runs QAT training steps of two models
def test_step_timing_runs_and_writes_json(tmp_path, capsys):
    out = tmp_path / "q.json"
    rc = _load().main(
        ["--device", "cpu", "--models", "lenet,resnet8", "--batch", "4", "--repeats", "1", "--warmup", "1", "--json", str(out)]
    )
    assert rc == 0
    res = json.loads(out.read_text())
    assert [r["model"] for r in res["steps"]] == ["lenet", "resnet8"]
    for r in res["steps"]:
        assert r["fp32_ms"] > 0 and r["qat_lsq_vs_fp32"] > 0 and r["qat_clipped_vs_fp32"] > 0
    assert res["gpu"] is None and res["device"] == "cpu"


def test_without_a_gpu_cuda_is_refused(capsys):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present")
    assert _load().main(["--models", "lenet"]) == 2
    assert "no CUDA GPU" in capsys.readouterr().err
