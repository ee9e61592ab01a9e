"""The Key findings each report opens with: computed from the run's numbers, and true to them."""

from __future__ import annotations

import math
import re

import pandas as pd
import pytest
import torch
from torch import nn

from workbook.studies import accuracy, hardware, kernels, quantizers


def _sweep(seeds: int = 1, failed: bool = False) -> pd.DataFrame:
    rows = []
    for seed in range(seeds):
        d = 0.01 * seed
        base = {"granularity": "channel", "estimator": "minmax", "seed": seed, "status": "ok", "int_agreement": 1.0}
        rows += [
            {**base, "method": "fp32", "ste": "lsq", "w_bits": 8, "a_bits": 8, "test_acc": 0.90 + d, "int_acc": math.nan},
            {**base, "method": "ptq", "ste": "clipped", "w_bits": 8, "a_bits": 8, "test_acc": 0.88 + d, "int_acc": 0.88 + d},
            {**base, "method": "qat", "ste": "lsq", "w_bits": 8, "a_bits": 8, "test_acc": 0.89 + d, "int_acc": 0.89 + d},
            {**base, "method": "qat", "ste": "lsq", "w_bits": 4, "a_bits": 4, "test_acc": 0.85 + d, "int_acc": 0.84 + d},
        ]
    if failed:
        rows.append(
            {"method": "qat", "ste": "pact", "w_bits": 2, "a_bits": 2, "status": "failed", "error": "x\nValueError: boom", "seed": 0}
        )
    return pd.DataFrame(rows)


def test_accuracy_findings_name_the_best_per_bit_width_and_the_gap() -> None:
    text = "\n".join(accuracy.key_findings(_sweep()))
    assert "FP32: 90.00 % test accuracy." in text
    assert "Best at W8A8: QAT lsq, 89.00 % (-1.00 points vs FP32)." in text
    assert "Best at W4A4: QAT lsq, 85.00 %" in text
    assert "QAT − PTQ at W8A8: +1.00 points" in text
    assert "within 1.00 points" in text  # the W4A4 IntModel is 1 point below its fake-quant model
    assert "±" not in text  # one seed: no spread to show


def test_accuracy_findings_show_spread_only_over_seeds_and_count_failures() -> None:
    text = "\n".join(accuracy.key_findings(_sweep(seeds=2, failed=True)))
    assert "FP32: 90.50 ± 0.50 %" in text and "1 trial failed" in text


def test_intro_promises_only_what_the_run_has() -> None:
    one = accuracy.intro(_sweep())
    assert "PACT" not in one and "pact" not in one and "no error bars" in one and "lsq" in one
    two = accuracy.intro(_sweep(seeds=2))
    assert "Error bars: standard deviation over seeds (up to 2" in two


def test_failures_section_is_absent_when_nothing_failed() -> None:
    assert accuracy.failures_section(_sweep()) is None
    sec = accuracy.failures_section(_sweep(failed=True))
    assert "Failed trials (1)" in sec._repr_html_() and "ValueError: boom" in sec._repr_html_()


def test_acc_vs_bits_is_categorical_without_lines_between_bit_widths() -> None:
    import matplotlib

    matplotlib.use("Agg")
    fig = accuracy.plot_acc_vs_bits(_sweep(seeds=2))
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_xticklabels()] == ["W8A8", "W4A4"]
    assert ax.get_xlabel() and ax.get_ylabel() == "test accuracy (%)"
    for line in ax.get_lines():
        if line.get_label().startswith(("QAT", "PTQ")):
            assert line.get_linestyle() in ("None", "none", ""), line.get_label()
    intmodel = [ln for ln in ax.get_lines() if "(IntModel)" in ln.get_label()]
    assert intmodel and all(ln.get_marker() == "D" and ln.get_markersize() >= 7 for ln in intmodel)


def _costs() -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"trial_id": "a", "method": "ptq", "ste": "clipped", "w_bits": 8, "a_bits": 8, "test_acc": 0.82, "int_acc": 0.82,
             "asic_energy_uj": 20.0, "asic_latency_us": 5.0, "asic_cycles": 5000, "fpga_fps": 1e5, "fpga_fits": True, "fpga_lut": 10000},
            {"trial_id": "b", "method": "qat", "ste": "lsq", "w_bits": 4, "a_bits": 4, "test_acc": 0.86, "int_acc": 0.86,
             "asic_energy_uj": 10.6, "asic_latency_us": 3.0, "asic_cycles": 3000, "fpga_fps": 2e5, "fpga_fits": True, "fpga_lut": 6000},
        ]
    )  # fmt: skip


def test_hardware_findings_say_what_four_bits_save() -> None:
    layers = pd.DataFrame({"layer": ["0 (conv)", "9 (linear)"], "total_cycles": [150, 850], "overall_util_pct": [12.0, 1.04]})
    text = "\n".join(hardware.key_findings(_costs(), layers, None, "QAT lsq W4A4"))
    assert "W4A4 uses 53 % of W8A8's ASIC energy (10.6 vs 20 µJ); on the FPGA 60 % of its LUTs (6,000 vs 10,000)" in text
    assert "at 2× its frame rate (200,000 vs 100,000 frames/s)" in text
    assert "layer 9 (linear) runs at 1.04 % array utilization and takes 85 % of the cycles" in text
    assert "Best at W4A4: QAT lsq W4A4, 86.00 % test accuracy" in text


def test_fpga_verdict_names_the_overflowing_resource() -> None:
    fit = hardware.FpgaFit("PYNQ-Z1", hardware.NO_FIT, pd.DataFrame(), {"bram18": 320}, [hardware.Overflow("bram18", 320, 280)])
    assert hardware.fpga_need(fit) == "needs 114 % of PYNQ-Z1's BRAM18"
    import matplotlib

    matplotlib.use("Agg")
    fig = hardware.plot_fpga_resources(fit, "PTQ W8A8")
    ax = fig.axes[0]
    assert "needs 114 % of PYNQ-Z1's BRAM18" in ax.get_title() and ax.get_ylabel() and ax.get_xlabel()


def test_pareto_figure_names_its_points_and_labels_its_axes() -> None:
    import matplotlib

    matplotlib.use("Agg")
    ax = hardware.plot_pareto(_costs()).axes[0]
    names = {t.get_text() for t in ax.texts}
    assert names == {"PTQ W8A8", "QAT lsq W4A4"}
    assert ax.get_xlabel() == "ASIC energy per inference (µJ)" and ax.get_ylabel() == "test accuracy (%)"
    front = hardware.pareto_front(_costs())
    assert front.trial_id.tolist() == ["b"]  # cheaper and more accurate: it alone is the front


def test_cost_view_shows_key_columns_and_folds_the_rest() -> None:
    page = hardware.cost_view(_costs())._repr_html_()
    head = page.partition("<details>")[0]
    assert "ASIC energy (µJ)" in head and "trial id" not in head and "86.00" in head


class _Op:
    def __init__(self, name: str, kind: str, module: str | None) -> None:
        self.name, self.kind, self.attrs = name, kind, ({"module": module} if module else {})


class _Model:
    ops = [_Op("_0", "conv", "0"), _Op("_0_pool", "maxpool", "0"), _Op("_9", "linear", "9"), _Op("flatten", "flatten", None)]


def test_layers_carry_the_model_module_names() -> None:
    names = hardware.layer_names(_Model())
    assert names == {"_0": "0 (conv)", "_0_pool": "0 (maxpool)", "_9": "9 (linear)", "flatten": "flatten (flatten)"}
    df = hardware.rename_layers(pd.DataFrame({"layer": ["_0", "_0_pool", "_9.g1", "TOTAL"]}), names)
    assert df.layer.tolist() == ["0 (conv)", "0 (maxpool)", "9 (linear) .g1", "TOTAL"]
    assert hardware.rename_in_text("bottleneck _0.swu, then _0_pool", names) == "bottleneck 0 (conv).swu, then 0 (maxpool)"


def test_converted_intmodel_records_module_names() -> None:
    from qatlab.config import profile
    from qatlab.data import load_dataset
    from qatlab.intmodel import convert
    from qatlab.nn import calibrate, prepare_qat
    from qatlab.quant import QuantSpec

    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 3))
    q = prepare_qat(model, QuantSpec(bits=8, symmetric=True, granularity="channel", axis=0), QuantSpec(bits=8), "clipped")
    x = torch.randn(16, 1, 8, 8)
    calibrate(q, [x], 1)
    im = convert(q.eval(), (1, 8, 8))
    modules = {op.attrs.get("module") for op in im.ops if op.kind in ("conv", "linear")}
    assert modules == {"0", "3"}
    del profile, load_dataset


def _error_table() -> pd.DataFrame:
    torch.manual_seed(0)
    m = nn.Sequential(nn.Conv2d(1, 8, 3), nn.ReLU(), nn.Flatten(), nn.Linear(8 * 6 * 6, 4))
    tensors = quantizers.capture_tensors(m, torch.randn(64, 1, 8, 8), max_act_values=4000)
    return quantizers.error_table(
        tensors, bits=(8, 4, 2), granularities=("tensor", "channel", "element"), estimators=("minmax", "mse"), mse_grid=8
    )


def test_quantizer_findings_and_halfrange_text_match_the_table() -> None:
    t = _error_table()
    text = "\n".join(quantizers.key_findings(t))
    assert "Weights, 8 bits: best is" in text and "element" not in text
    h = quantizers.halfrange_cost(t).reset_index()
    assert "element" not in set(h.granularity) and math.isfinite(h.loss_db.abs().max())
    explained = quantizers.halfrange_explained(t)
    for (kind, bits), g in h.groupby(["kind", "bits"]):
        name = "weights" if kind == "weight" else "activations"
        assert f"{name} at {bits} bits lose {g.loss_db.mean():.1f} dB" in explained
    # 2-bit symmetric weights: the two rules coincide, and the text says why.
    assert h[(h.kind == "weight") & (h.bits == 2)].loss_db.abs().max() < 0.05 and "2^(b−2) = 1" in explained
    hi = h[h.bits >= 4].loss_db.mean()
    assert f"costs {hi:.1f} dB on average" in text and 4.0 < hi < 8.0


def test_quantizer_summary_has_no_infinities_and_no_degenerate_rows() -> None:
    s = quantizers.summary(_error_table())
    assert "element" not in s.index.get_level_values("granularity")
    assert not s.isin([math.inf, -math.inf]).any().any()


def test_histograms_are_titled_with_the_layer_and_labelled() -> None:
    import matplotlib

    matplotlib.use("Agg")
    tensors = {"9.weight": torch.randn(4, 16), "4.act": torch.rand(4, 16)}
    fig = quantizers.plot_histograms(tensors, bits=4)
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titles[0].startswith("layer 9: weights") and titles[1].startswith("layer 4: input activations")
    assert all(ax.get_xlabel() == "value" and ax.get_ylabel() for ax in fig.axes if ax.get_visible())


def test_cpu_reference_table_measures_qatlab_kernels() -> None:
    t = kernels.cpu_reference_table((16, 32), repeats=1)
    assert (t.path == kernels.CPU_PATH).all() and set(t.kernel) == {"int8 GEMM", "int8 conv2d"}
    assert (t.GOPS > 0).all()
    text = "\n".join(kernels.key_findings(t))
    assert "CPU reference" in text and "_int_mm" not in text
    with pytest.raises(ValueError, match="sizes"):
        kernels.cpu_reference_table((0,))
    assert re.search(r"int8 GEMM: up to [\d.,]+ GOPS", text)


def test_gpu_table_refuses_sizes_int_mm_cannot_take() -> None:
    with pytest.raises(ValueError, match="multiples of 8"):
        kernels.gpu_table((100,))
