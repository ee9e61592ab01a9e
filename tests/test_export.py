"""ONNX QDQ export checked by ONNX Runtime (digits-sized models: seconds, not minutes)."""

from __future__ import annotations

import os

import numpy as np
import onnx
import pytest
import torch
from torch import nn

from qatlab.data import load_dataset
from qatlab.export import (
    ExportError,
    UnsupportedLayerError,
    build_onnx,
    compare_onnx,
    emulate_ort,
    export_onnx,
    ort_kernels,
    predict_onnx,
    run_onnx,
)
from qatlab.intmodel import IntModel, convert, predict, run
from qatlab.intmodel.model import ActQ, IntOp
from qatlab.models import build_model
from qatlab.nn import UnsupportedLayerError as NnUnsupported
from qatlab.nn import calibrate, prepare_qat
from qatlab.quant import QuantSpec


@pytest.fixture(scope="module")
def digits():
    return load_dataset("digits")


def _specs(w_bits: int, a_bits: int) -> tuple[QuantSpec, QuantSpec]:
    # As qatlab.train.specs: signed symmetric per-channel weights, asymmetric per-tensor activations.
    return (
        QuantSpec(bits=w_bits, symmetric=True, granularity="channel", axis=0),
        QuantSpec(bits=a_bits, symmetric=False, granularity="tensor"),
    )


def _quantized(fp32: nn.Module, digits, w_bits: int, a_bits: int, ste: str = "clipped") -> torch.fx.GraphModule:
    w, a = _specs(w_bits, a_bits)
    q = prepare_qat(fp32, w, a, ste)
    x = digits.train.tensors[0]
    calibrate(q, [x[i : i + 128] for i in range(0, 512, 128)])
    return q.eval()


def _zoo(name: str, digits, w_bits: int = 8, a_bits: int = 8) -> torch.fx.GraphModule:
    """A calibrated (untrained) zoo model: enough to check that every op exports and agrees."""
    torch.manual_seed(0)
    m = build_model(name, digits.num_classes, digits.input_shape)
    m.train()
    with torch.no_grad():  # give BatchNorm real statistics
        m(digits.train.tensors[0][:256])
    return _quantized(m.eval(), digits, w_bits, a_bits)


@pytest.fixture(scope="module")
def trained_lenet(digits):
    from qatlab.train import fit, loader

    torch.manual_seed(0)
    m = build_model("lenet", digits.num_classes, digits.input_shape)
    fit(m, loader(digits.train, 64, torch.Generator().manual_seed(0), True), 2, 2e-3, torch.device("cpu"))
    return m.eval()


# ---- every model of the zoo ------------------------------------------------------------


@pytest.mark.parametrize("name", ["mlp", "lenet", "resnet8"])
def test_zoo_w8a8_exports_checks_and_runs_in_integer_kernels(name, digits, tmp_path):
    q = _zoo(name, digits)
    im = convert(q, digits.input_shape)
    path = tmp_path / f"{name}.onnx"
    info = export_onnx(im, path)
    model = onnx.load(path)
    onnx.checker.check_model(model, full_check=True)
    assert info.opset == 13 and info.code_types == {"UINT8": len(im.ops)} and info.clips == 0
    # Per-channel weights: one scale per output channel on every weight DQ (axis 0).
    inits = {i.name: i for i in model.graph.initializer}
    for op in im.compute_ops():
        assert list(inits[f"{op.name}.weight_scale"].dims) == [op.tensors["weight"].shape[0]]
        # uint8 activations: the weights go as uint8 codes + 128 (ORT's exact U8U8 kernels).
        w_q, w_zp = inits[f"{op.name}.weight_q"], inits[f"{op.name}.weight_zero_point"]
        assert w_q.data_type == w_zp.data_type == onnx.TensorProto.UINT8
        assert (onnx.numpy_helper.to_array(w_zp) == 128).all()
        assert np.array_equal(onnx.numpy_helper.to_array(w_q).astype(np.int64) - 128, op.tensors["weight"].numpy())
        assert inits[f"{op.name}.bias_q"].data_type == onnx.TensorProto.INT32
    # ONNX Runtime fuses every DQ→op→Q group: no float Conv/Gemm/Add is left.
    kernels = ort_kernels(path)
    assert not {"Conv", "Gemm", "MatMul", "Add"} & set(kernels), kernels
    assert kernels.get("QGemm", 0) == sum(op.kind == "linear" for op in im.ops)
    assert kernels.get("QLinearConv", 0) == sum(op.kind == "conv" for op in im.ops)
    x = digits.test.tensors[0][:200]
    out = run_onnx(path, x)
    ref = run(im, x)
    assert out.codes.shape == ref.shape and out.logits.dtype == torch.float32
    # Output codes: equal but for ties that ORT's float32 requantization breaks the other way.
    assert float((out.codes == ref).float().mean()) >= 0.98
    assert float((out.codes.argmax(1) == ref.argmax(1)).float().mean()) >= 0.995
    # Every difference is ORT's float32 requantization, replayed exactly.
    assert torch.equal(emulate_ort(im, x), out.codes)
    q_scale, q_zp = im.output_q.scale, im.output_q.zero_point
    assert torch.allclose(out.logits, (out.codes.float() - q_zp) * q_scale)


def test_qat_model_exports_directly_and_predict_matches(digits, tmp_path):
    q = _zoo("lenet", digits)
    path = tmp_path / "m.onnx"
    export_onnx(q, path, input_shape=digits.input_shape)
    x = digits.test.tensors[0][:64]
    assert torch.equal(predict_onnx(path, x), predict(convert(q, digits.input_shape), x))
    with pytest.raises(ExportError, match="input_shape"):
        export_onnx(q, tmp_path / "n.onnx")


# ---- accuracy targets on a trained model -----------------------------------------------


def test_trained_w8a8_agreement_and_accuracy(trained_lenet, digits, tmp_path):
    q = _quantized(trained_lenet, digits, 8, 8)
    im = convert(q, digits.input_shape)
    path = tmp_path / "w8a8.onnx"
    export_onnx(im, path)
    x, y = digits.test.tensors
    c = compare_onnx(im, path, x, y, fake_quant=q, per_layer=True)
    assert c.n == len(y) and c.int_acc > 0.85 and c.fq_acc is not None
    assert c.agreement >= 0.995
    assert abs(c.ort_acc - c.int_acc) <= 0.002
    assert c.emulated_agreement == 1.0
    assert [ld.name for ld in c.layers] == [op.output for op in im.ops]
    assert all(ld.emulated_mismatch == 0.0 for ld in c.layers)
    assert "ONNX Runtime" in c.summary() and c.to_dict()["agreement"] == c.agreement


@pytest.mark.parametrize("bits", [4, 2])
def test_trained_sub8bit_clip_form_within_half_a_point(trained_lenet, digits, tmp_path, bits):
    q = _quantized(trained_lenet, digits, bits, bits)
    im = convert(q, digits.input_shape)
    path = tmp_path / f"w{bits}.onnx"
    info = export_onnx(im, path)
    assert info.low_bit == "clip" and info.opset == 13 and info.clips > 0
    clips = [n for n in onnx.load(path).graph.node if n.op_type == "Clip"]
    assert all(n.input[0].startswith(n.output[0]) for n in clips)  # Q → Clip → DQ, on integer codes
    kernels = ort_kernels(path)
    assert "QLinearConv" in kernels and "Conv" not in kernels  # still integer kernels
    x, y = digits.test.tensors
    c = compare_onnx(im, path, x, y)
    assert abs(c.ort_acc - c.int_acc) <= 0.005
    assert c.emulated_agreement == 1.0


# ---- the 4-bit-type form and wider types -----------------------------------------------


@pytest.mark.parametrize("name", ["lenet", "resnet8"])
def test_int4_form_uses_4bit_types_and_runs(name, digits, tmp_path):
    q = _zoo(name, digits, 4, 4)
    im = convert(q, digits.input_shape)
    path = tmp_path / "i4.onnx"
    info = export_onnx(im, path, low_bit="int4")
    assert info.opset == 21 and info.code_types.get("UINT4", 0) > 0
    model = onnx.load(path)
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert all(types[f"{op.name}.weight_q"] == onnx.TensorProto.INT4 for op in im.compute_ops())
    if name == "lenet":  # max-pool outputs stay uint8 (ORT would fold them into a uint4 MaxPool)
        assert info.code_types.get("UINT8", 0) == sum(op.kind == "maxpool" for op in im.ops)
    kernels = ort_kernels(path)
    assert "Conv" in kernels or "Gemm" in kernels  # no 4-bit integer kernels: ORT runs float ops
    x = digits.test.tensors[0][:200]
    out = run_onnx(path, x)  # codes recovered from the logits (ORT's Python API has no uint4)
    ref = run(im, x)
    assert float((out.codes.argmax(1) == ref.argmax(1)).float().mean()) >= 0.95
    assert float((out.codes == ref).float().mean()) >= 0.95


def test_16bit_activations_use_opset_21(digits, tmp_path):
    q = _zoo("lenet", digits, 10, 10)
    im = convert(q, digits.input_shape)
    info = export_onnx(im, tmp_path / "a10.onnx")
    assert info.opset == 21 and set(info.code_types) == {"UINT16"}
    x = digits.test.tensors[0][:100]
    assert float((run_onnx(tmp_path / "a10.onnx", x).codes == run(im, x)).float().mean()) >= 0.95
    with pytest.raises(ExportError, match="needs opset 21"):
        export_onnx(im, tmp_path / "old.onnx", opset=17)
    assert not (tmp_path / "old.onnx").exists()


def test_fixed_point_rounding_differences_are_measured(digits):
    """An IntModel that requantizes in gemmlowp fixed point rounds differently from ORT's
    float32: the codes differ, and the float32 replay accounts for every difference."""
    q = _zoo("lenet", digits)
    im = convert(q, digits.input_shape, rounding="fixed")
    x, y = digits.test.tensors[0][:200], digits.test.tensors[1][:200]
    c = compare_onnx(im, build_onnx(im).SerializeToString(), x, y)
    assert c.code_agreement < 1.0
    assert c.emulated_agreement == 1.0 and c.emulated_pred_agreement == 1.0


def test_without_graph_optimizations_ort_runs_the_float_graph(digits):
    q = _zoo("lenet", digits, 4, 4)
    im = convert(q, digits.input_shape)
    data = build_onnx(im).SerializeToString()
    assert "Conv" in ort_kernels(data, optimization="disable")
    x, y = digits.test.tensors[0][:200], digits.test.tensors[1][:200]
    c = compare_onnx(im, data, x, y, optimization="disable", emulate=False)
    assert c.agreement >= 0.95 and c.emulated_agreement is None


# ---- errors ------------------------------------------------------------------------------


def test_unsupported_layer_names_layer_and_type(digits, tmp_path):
    q = _zoo("mlp", digits)
    g = q.graph
    out = next(n for n in g.nodes if n.op == "output")
    q.add_submodule("squash", nn.Sigmoid())
    with g.inserting_before(out):
        node = g.call_module("squash", (out.args[0],))
    out.args = (node,)
    q.recompile()
    path = tmp_path / "x.onnx"
    with pytest.raises(UnsupportedLayerError, match="squash.*Sigmoid") as e:
        export_onnx(q, path, input_shape=digits.input_shape)
    assert isinstance(e.value, NnUnsupported)
    assert not path.exists()


def test_unknown_op_kind_in_an_int_model_is_named(digits, tmp_path):
    im = convert(_zoo("mlp", digits), digits.input_shape)
    last = im.ops[-1]
    im.ops.append(IntOp("softmax", "probs", [last.output], "probs", last.out_q))
    im.output_name = "probs"
    with pytest.raises(UnsupportedLayerError, match="probs.*'softmax'"):
        export_onnx(im, tmp_path / "x.onnx")


def test_bad_arguments(digits, tmp_path):
    im = convert(_zoo("mlp", digits), digits.input_shape)
    with pytest.raises(ExportError, match="opset 12 is out of range"):
        export_onnx(im, tmp_path / "a.onnx", opset=12)
    with pytest.raises(ExportError, match="low_bit"):
        export_onnx(im, tmp_path / "a.onnx", low_bit="int3")
    with pytest.raises(ExportError, match="does not exist"):
        export_onnx(im, tmp_path / "no" / "a.onnx")
    with pytest.raises(ExportError, match="plain Sequential"):
        export_onnx(build_model("mlp", 10, digits.input_shape), tmp_path / "a.onnx")
    bad = IntModel([IntOp("quantize", "q", ["x"], "q", ActQ(0.0, 0, 0, 255))], "x", "q", (1, 8, 8))
    with pytest.raises(UnsupportedLayerError, match="scale"):
        build_onnx(bad)
    assert list(tmp_path.iterdir()) == []


def test_failed_export_leaves_existing_file_and_no_temp(digits, tmp_path):
    im = convert(_zoo("mlp", digits), digits.input_shape)
    path = tmp_path / "m.onnx"
    path.write_bytes(b"previous")
    with pytest.raises(ExportError):
        export_onnx(im, path, opset=12)
    assert path.read_bytes() == b"previous"
    export_onnx(im, path)
    assert onnx.load(path).producer_name == "qatlab"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


# ---- the CLI -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, digits):
    """A qat checkpoint as run_trial writes it, without the training (seconds)."""
    from qatlab.config import profile
    from qatlab.train import save_checkpoint, specs

    cfg = profile("tiny", method="qat", w_bits=4, a_bits=4, ste="lsq")
    torch.manual_seed(0)
    m = build_model(cfg.model, digits.num_classes, digits.input_shape)
    w, a = specs(cfg)
    q = prepare_qat(m, w, a, cfg.ste, first_last_bits=cfg.first_last_bits)
    x = digits.train.tensors[0]
    calibrate(q, [x[i : i + 128] for i in range(0, 512, 128)])
    d = tmp_path_factory.mktemp("trial")
    save_checkpoint(q, cfg, d / "model.pt", digits.num_classes, digits.input_shape)
    convert(q.eval(), digits.input_shape, cfg.rounding, meta={"config": cfg.to_dict()}).save(d / "intmodel.pt")
    fp = profile("tiny", method="fp32")
    save_checkpoint(m, fp, d / "fp32.pt", digits.num_classes, digits.input_shape)
    return d


def _cli(argv, capsys):
    from workbook.cli import main

    rc = main(argv)
    out, err = capsys.readouterr()
    return rc, out, err


def test_cli_exports_and_checks(checkpoint, tmp_path, capsys):
    out = tmp_path / "m.onnx"
    js = tmp_path / "m.json"
    rc, stdout, err = _cli(
        ["export", "onnx", str(checkpoint / "model.pt"), str(out), "--check", "--limit", "120", "--json", str(js)], capsys
    )
    assert rc == 0, err
    assert out.exists() and "wrote" in stdout and "fake-quant" in stdout and "ONNX Runtime" in stdout
    import json

    rec = json.loads(js.read_text())
    assert rec["n"] == 120 and rec["agreement"] >= 0.99 and rec["fq_acc"] is not None
    # The IntModel file exports to the same graph.
    out2 = tmp_path / "i.onnx"
    rc, stdout, err = _cli(["export", "onnx", str(checkpoint / "intmodel.pt"), str(out2)], capsys)
    assert rc == 0, err
    a, b = onnx.load(out), onnx.load(out2)
    assert [n.op_type for n in a.graph.node] == [n.op_type for n in b.graph.node]


def test_cli_bad_checkpoints_are_one_line_errors_and_write_nothing(checkpoint, tmp_path, capsys):
    data = (checkpoint / "model.pt").read_bytes()
    (tmp_path / "trunc.pt").write_bytes(data[: len(data) // 2])
    torch.save({"weights": torch.zeros(3)}, tmp_path / "foreign.pt")
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint")
    cases = {
        "trunc.pt": "truncated",
        "foreign.pt": "not a qatlab checkpoint",
        "junk.pt": "cannot read checkpoint",
        "missing.pt": "no such checkpoint",
    }
    for name, msg in cases.items():
        out = tmp_path / f"{name}.onnx"
        rc, _, err = _cli(["export", "onnx", str(tmp_path / name), str(out)], capsys)
        assert rc == 2 and msg in err and err.count("\n") == 1, (name, err)
        assert not out.exists()
    rc, _, err = _cli(["export", "onnx", str(checkpoint / "fp32.pt"), str(tmp_path / "f.onnx")], capsys)
    assert rc == 2 and "fp32" in err
    rc, _, err = _cli(["export", "onnx", str(checkpoint / "model.pt"), str(tmp_path / "m.txt")], capsys)
    assert rc == 2 and ".onnx" in err
    rc, _, err = _cli(["export", "onnx", str(checkpoint / "model.pt"), str(tmp_path / "m.onnx"), "--opset", "12"], capsys)
    assert rc == 2 and "opset 12" in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.pt", "junk.pt", "trunc.pt"]


def test_cli_module_imports_no_heavy_packages():
    import subprocess
    import sys

    code = "import sys, workbook.export_onnx as m, argparse; m.add_arguments(argparse.ArgumentParser()); print('torch' in sys.modules, 'onnx' in sys.modules)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ}, check=True)
    assert res.stdout.split() == ["False", "False"]


def test_runtime_input_checks(digits, tmp_path):
    im = convert(_zoo("mlp", digits), digits.input_shape)
    data = build_onnx(im).SerializeToString()
    with pytest.raises(ExportError, match="labels"):
        compare_onnx(im, data, digits.test.tensors[0][:5], digits.test.tensors[1][:4])
    with pytest.raises(ExportError, match="optimization"):
        run_onnx(data, digits.test.tensors[0][:5], optimization="max")
    out = run_onnx(data, np.zeros((0, *digits.input_shape), dtype=np.float32))
    assert out.codes.shape[0] == 0
