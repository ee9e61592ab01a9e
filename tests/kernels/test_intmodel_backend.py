"""The IntModel's kernel backend (qatlab.kernels.intmodel_backend) and backends by name.

On CPU, ``make_runner("cpu")`` runs the backend's whole orchestration (offset trick,
bias folding, K padding, im2col, fused vs unfused requantization, layout) on the
kernels' CPU twins; its codes must equal the reference executor's, bit for bit. The
``gpu`` tests run the same models with ``backend="cuda"``.
"""

from __future__ import annotations

import functools
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st
from torch import nn

import qatlab.intmodel.backends as backends
import qatlab.kernels.intmodel_backend as ib
from qatlab.config import profile
from qatlab.intmodel import (
    AccumulatorOverflowError,
    IntModel,
    UnknownBackendError,
    backend_names,
    convert,
    predict,
    reference,
    register_backend,
    run,
)
from qatlab.intmodel.model import ActQ, IntOp
from qatlab.kernels import CupyUnavailableError, cuda_available, kernel_names
from qatlab.kernels.intmodel_backend import make_runner
from qatlab.models import build_model
from qatlab.nn import calibrate, prepare_qat
from qatlab.quant import QuantSpec, quantize_multiplier
from qatlab.train import resolve_int_backend, run_trial
from tests.export.int_ops import BLOCKS, NetBuilder, images

SHAPE = (1, 8, 8)  # digits-sized: every zoo model builds and runs in milliseconds
MODELS = ("mlp", "lenet", "resnet8")
# (w_bits, a_bits, weight granularity)
QUANT = [(8, 8, "channel"), (4, 4, "channel"), (8, 8, "tensor"), (4, 4, "tensor")]


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    # These tensors are tiny: on a shared, loaded 2-core box two intra-op threads made
    # F.unfold ~100x slower (thread hand-off), and integer results cannot depend on it.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _images(n: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand((n, *SHAPE), generator=g) * 16  # digits' pixel range


@functools.lru_cache(maxsize=None)
def _int_model(name: str, w_bits: int, a_bits: int, gran: str, rounding: str) -> IntModel:
    torch.manual_seed(0)
    m = build_model(name, 10, SHAPE)
    m.train()
    with torch.no_grad():  # BN statistics off their defaults, so folding means something
        for i in range(3):
            m(_images(32, i))
    m.eval()
    ste = "lsq" if w_bits < 8 else "clipped"
    w = QuantSpec(bits=w_bits, symmetric=True, granularity=gran, axis=0)
    a = QuantSpec(bits=a_bits, symmetric=False, granularity="tensor")  # asymmetric activations
    q = prepare_qat(m, w, a, ste)
    calibrate(q, [_images(64, 10 + i) for i in range(2)])
    return convert(q, SHAPE, rounding)


# ---- CPU: the orchestration on the kernels' CPU twins ---------------------------------


HAVE_CONV = "int8_conv2d_requant" in kernel_names()
CONV_IMPLS = ["im2col", "auto"] if HAVE_CONV else ["im2col"]


@pytest.mark.parametrize("rounding", ["float", "fixed"])
@pytest.mark.parametrize("quant", QUANT, ids=lambda q: f"w{q[0]}a{q[1]}-{q[2]}")
@pytest.mark.parametrize("name, conv_impl", [(m, c) for m in MODELS for c in CONV_IMPLS if m != "mlp" or c == "im2col"])
def test_cpu_kernels_equal_reference(name: str, conv_impl: str, quant: tuple[int, int, str], rounding: str) -> None:
    im = _int_model(name, *quant, rounding)
    x = _images(16, 99)
    want = reference.run(im, x, 6)
    runner = make_runner("cpu", conv_impl=conv_impl)
    got = run(im, x, 6, runner=runner)  # three batches, the last one short
    assert got.dtype == torch.int32
    assert torch.equal(got, want)
    modes = {layer.mode for layer in runner._layers.values()}
    # float rounding with 8-bit codes is the fused epilogue's job; fixed needs the int32 GEMM.
    assert modes == ({"fused"} if rounding == "float" else {"int32"})


@pytest.mark.parametrize("conv_impl", ["im2col", "auto"])
def test_conv_path_choice(conv_impl: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """``auto`` takes the registry's conv kernels when it has them, else im2col + GEMM."""
    direct: list[str] = []
    real = ib.IntModelRunner.conv_direct

    def spy(self: ib.IntModelRunner, layer: object, *args: object) -> torch.Tensor:
        direct.append(layer.op.name)  # type: ignore[attr-defined]
        return real(self, layer, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ib.IntModelRunner, "conv_direct", spy)
    im = _int_model("resnet8", 8, 8, "channel", "float")
    x = _images(20, 5)
    assert torch.equal(run(im, x, runner=make_runner("cpu", conv_impl=conv_impl)), reference.run(im, x))
    n_conv = sum(op.kind == "conv" for op in im.ops)
    assert len(direct) == (n_conv if conv_impl == "auto" and HAVE_CONV else 0)


def test_layers_are_prepared_once_per_runner(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    real = ib._prepare

    def counting(op: IntOp, *args: object) -> object:
        calls.append(op.name)
        return real(op, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(ib, "_prepare", counting)
    im = _int_model("lenet", 8, 8, "channel", "float")
    run(im, _images(30, 1), 7, runner=make_runner("cpu"))  # five batches
    assert sorted(calls) == sorted(op.name for op in im.compute_ops())


def _linear_op(w: torch.Tensor, out_q: ActQ, bias: torch.Tensor, real: torch.Tensor, relu: bool = False) -> IntOp:
    n = w.shape[0]
    m, s = quantize_multiplier(real)
    tensors = {
        "weight": w, "bias": bias, "multiplier": real, "fixed_multiplier": torch.from_numpy(m), "shift": torch.from_numpy(s),
    }  # fmt: skip
    return IntOp("linear", "fc", ["x"], "y", out_q, {"relu": relu, "out_shape": (n,)}, tensors)


# The op-level checks run on the CPU twins here and on the CUDA kernels on a GPU.
KERNEL_BACKENDS = ["cpu", pytest.param("cuda", marks=pytest.mark.gpu)]


@pytest.mark.parametrize("kernel_backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("rounding", ["float", "fixed"])
@pytest.mark.parametrize(
    "case, mode",
    [("int16 weights", "reference"), ("9-bit activations", "reference"), ("16-bit outputs", "int32"),
     ("int8 relu", "fused"), ("signed int8 in", "fused")],
)  # fmt: skip
def test_fallback_modes_equal_reference(case: str, mode: str, rounding: str, kernel_backend: str) -> None:
    g = torch.Generator().manual_seed(3)
    xq, yq = ActQ(0.05, 7, 0, 255), ActQ(0.1, 3, -128, 127)
    w = torch.randint(-128, 128, (10, 33), generator=g, dtype=torch.int8)
    relu, gain = False, 1.0
    if case == "int16 weights":
        w = torch.randint(-3000, 3000, (10, 33), generator=g, dtype=torch.int16)
        gain = 0.03
    elif case == "9-bit activations":
        xq = ActQ(0.05, 200, 0, 511)
    elif case == "16-bit outputs":
        yq, gain = ActQ(0.001, 100, 0, 65535), 50.0
    elif case == "int8 relu":
        yq, relu = ActQ(0.1, 20, 0, 255), True
    elif case == "signed int8 in":
        xq = ActQ(0.05, -5, -128, 127)
    # Per-channel multipliers that spread the outputs over the code range (not all clamped).
    real = (torch.rand(10, generator=g, dtype=torch.float64) + 0.5) * 4e-4 * gain
    op = _linear_op(w, yq, torch.randint(-5000, 5000, (10,), generator=g, dtype=torch.int32), real, relu)
    x = torch.randint(xq.qmin, xq.qmax + 1, (37, 33), generator=g, dtype=torch.int32)
    runner = make_runner(kernel_backend)
    got = runner(op, {"x": x.to(runner.device)}, {"x": xq}, rounding)
    assert torch.equal(got.cpu(), reference.run_op(op, {"x": x}, {"x": xq}, rounding))
    want_mode = "int32" if (mode == "fused" and rounding == "fixed") else mode
    assert runner._layers[id(op)].mode == want_mode


@pytest.mark.parametrize("kernel_backend", KERNEL_BACKENDS)
def test_possible_overflow_keeps_the_reference_check(kernel_backend: str) -> None:
    """Where the int32 sum could overflow, the fused epilogue (which would wrap) is not
    used: the unfused path raises exactly where the reference raises."""
    xq, yq = ActQ(1.0, 0, 0, 255), ActQ(1.0, 0, -128, 127)
    k = 40000  # |Σ w·(q − 128)| ≤ 40000 · 127 · 128 ≈ 6.5e8: with a bias near 2^31 it may not fit
    w = torch.full((2, k), 127, dtype=torch.int8)
    op = _linear_op(w, yq, torch.tensor([2**31 - 10**8, 0], dtype=torch.int32), torch.full((2,), 3e-8, dtype=torch.float64))
    runner = make_runner(kernel_backend)
    small = torch.zeros((1, k), dtype=torch.int32)  # q = z: the sum is the bias alone
    got = runner(op, {"x": small.to(runner.device)}, {"x": xq}, "float")
    assert torch.equal(got.cpu(), reference.run_op(op, {"x": small}, {"x": xq}, "float"))
    assert runner._layers[id(op)].mode == "int32"
    big = torch.full((1, k), 255, dtype=torch.int32)
    with pytest.raises(AccumulatorOverflowError):
        reference.run_op(op, {"x": big}, {"x": xq}, "float")
    with pytest.raises(AccumulatorOverflowError):
        runner(op, {"x": big.to(runner.device)}, {"x": xq}, "float")


class _Grouped(nn.Module):
    """Grouped, strided, dilated and padded convs: geometry the zoo lacks."""

    def __init__(self) -> None:
        super().__init__()
        self.c1 = nn.Conv2d(1, 4, 3, padding=2, dilation=2)
        self.c2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, groups=2)
        self.fc = nn.Linear(6 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(torch.relu(self.c2(torch.relu(self.c1(x)))), 1))


@pytest.mark.parametrize("kernel_backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("rounding", ["float", "fixed"])
def test_grouped_dilated_conv_equals_reference(rounding: str, kernel_backend: str) -> None:
    torch.manual_seed(1)
    q = prepare_qat(_Grouped().eval(), QuantSpec(bits=8, granularity="channel"), QuantSpec(bits=8, symmetric=False))
    calibrate(q, [_images(32, 7)])
    im = convert(q, SHAPE, rounding)
    assert any(op.attrs.get("groups") == 2 for op in im.ops)
    x = _images(9, 8)
    assert torch.equal(run(im, x, runner=make_runner(kernel_backend)), reference.run(im, x))


# ---- the newer op kinds: clamp, lut, mul, cat, mean, adaptive pools, data movement ---------


@pytest.mark.parametrize("conv_impl", CONV_IMPLS)
@pytest.mark.parametrize("rounding", ["float", "fixed"])
@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_new_kinds_blocks_equal_reference(block: str, rounding: str, conv_impl: str) -> None:
    im = BLOCKS[block](rounding, 0, 8)
    x = images(20, im.input_shape, 11)
    runner = make_runner("cpu", conv_impl=conv_impl)
    assert torch.equal(run(im, x, 6, runner=runner), reference.run(im, x))
    depthwise = {op.name for op in im.ops if op.kind == "conv" and op.tensors["weight"].shape[1] == 1 and op.attrs["groups"] > 1}
    assert depthwise and {layer.op.name for layer in runner._layers.values() if layer.depthwise} == depthwise


@pytest.mark.parametrize("bits", [4, 6])
def test_new_kinds_below_8_bits_equal_reference(bits: int) -> None:
    for block in sorted(BLOCKS):
        for rounding in ("float", "fixed"):
            im = BLOCKS[block](rounding, 1, bits)
            x = images(9, im.input_shape, 12)
            assert torch.equal(run(im, x, runner=make_runner("cpu")), reference.run(im, x)), (block, rounding)


@settings(max_examples=25)
@given(
    channels=st.integers(1, 6),
    k=st.sampled_from([1, 3, 5]),
    stride=st.integers(1, 2),
    padding=st.integers(0, 2),
    dilation=st.integers(1, 2),
    size=st.integers(5, 9),
    rounding=st.sampled_from(["float", "fixed"]),
    seed=st.integers(0, 999),
    clamp=st.booleans(),
)
def test_depthwise_conv_path_equals_reference(
    channels: int, k: int, stride: int, padding: int, dilation: int, size: int, rounding: str, seed: int, clamp: bool
) -> None:
    """Depthwise convs take F.conv2d in float64 (exact integer sums) instead of one GEMM
    per channel; the reference's im2col + int matmul is the plain twin."""
    assume(size + 2 * padding >= dilation * (k - 1) + 1)
    nb = NetBuilder(images(8, (channels, size, size), seed), rounding=rounding, seed=seed)
    y = nb.conv("x_q", channels, k=k, stride=stride, padding=padding, groups=channels, dilation=dilation,
                clamp=(-0.2, 0.3) if clamp else None)  # fmt: skip
    im = nb.build(y)
    x = images(5, im.input_shape, seed + 1)
    runner = make_runner("cpu")
    assert torch.equal(run(im, x, runner=runner), reference.run(im, x))
    assert [layer.depthwise for layer in runner._layers.values()] == [channels > 1]


@settings(max_examples=80)
@given(
    qmin=st.sampled_from([0, -128]),
    span=st.sampled_from([15, 255]),
    z=st.integers(0, 255),
    relu=st.booleans(),
    c_lo=st.integers(-300, 300),
    width=st.integers(0, 400),
)
def test_out_range_is_the_references_two_clamps(qmin: int, span: int, z: int, relu: bool, c_lo: int, width: int) -> None:
    q = ActQ(0.1, qmin + z % (span + 1), qmin, qmin + span)
    op = IntOp("linear", "fc", ["x"], "y", q, {"relu": relu, "clamp": [c_lo, c_lo + width]})
    y = torch.arange(-700, 700)
    lo, hi = ib.out_range(op)
    assert torch.equal(y.clamp(lo, hi).to(torch.int32), reference._saturate(y, op))


@pytest.mark.parametrize("kernel_backend", KERNEL_BACKENDS)
@pytest.mark.parametrize("rounding", ["float", "fixed"])
def test_fused_clamp_narrows_the_epilogue(rounding: str, kernel_backend: str) -> None:
    g = torch.Generator().manual_seed(5)
    xq, yq = ActQ(0.05, 7, 0, 255), ActQ(0.1, 30, 0, 255)
    w = torch.randint(-128, 128, (10, 33), generator=g, dtype=torch.int8)
    real = (torch.rand(10, generator=g, dtype=torch.float64) + 0.5) * 2e-3
    op = _linear_op(w, yq, torch.randint(-5000, 5000, (10,), generator=g, dtype=torch.int32), real, relu=True)
    op.attrs["clamp"] = [40, 200]
    x = torch.randint(0, 256, (37, 33), generator=g, dtype=torch.int32)
    runner = make_runner(kernel_backend)
    got = runner(op, {"x": x.to(runner.device)}, {"x": xq}, rounding).cpu()
    want = reference.run_op(op, {"x": x}, {"x": xq}, rounding)
    assert torch.equal(got, want)
    assert int(want.min()) == 40 and int(want.max()) == 200  # the clamp bites at both ends
    assert runner._layers[id(op)].mode == ("fused" if rounding == "float" else "int32")


# ---- backends by name -----------------------------------------------------------------


def test_backend_by_name() -> None:
    im = _int_model("lenet", 4, 4, "channel", "float")
    x = _images(12, 2)
    assert {"cpu", "cuda"} <= set(backend_names())
    assert torch.equal(run(im, x, backend="cpu"), reference.run(im, x))
    assert torch.equal(predict(im, x, backend="cpu"), reference.predict(im, x))
    with pytest.raises(UnknownBackendError, match="known: cpu, cuda"):
        run(im, x, backend="tpu")
    with pytest.raises(ValueError, match="not both"):
        run(im, x, runner=reference.run_op, backend="cpu")


def test_registered_backend_is_imported_on_use(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(backends, "_BACKENDS", dict(backends._BACKENDS))
    register_backend("cpu-kernels", "qatlab.kernels.intmodel_backend:make_runner")
    with pytest.raises(ValueError, match="package.module:function"):
        register_backend("bad", "no_colon")
    monkeypatch.setattr(ib, "make_runner", lambda: ib.IntModelRunner("cpu"))
    im = _int_model("mlp", 8, 8, "tensor", "fixed")
    x = _images(5, 3)
    assert torch.equal(run(im, x, backend="cpu-kernels"), reference.run(im, x))


def test_cuda_without_cupy_says_what_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(ib, "import_cupy", _missing_cupy)
    im = _int_model("mlp", 8, 8, "tensor", "float")
    with pytest.raises(CupyUnavailableError) as err:
        run(im, _images(2, 0), backend="cuda")
    msg = str(err.value)
    assert "pip install -e '.[gpu]'" in msg and ".[gpu-cuda13]" in msg and "No module named 'cupy'" in msg


def test_intmodel_import_does_not_import_kernels() -> None:
    code = "import sys, qatlab.intmodel; print(any(m.startswith(('qatlab.kernels', 'cupy')) for m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_bad_runner_options() -> None:
    with pytest.raises(ValueError, match="kernel_backend"):
        make_runner("tpu")
    with pytest.raises(ValueError, match="conv_impl"):
        make_runner("cpu", conv_impl="winograd")
    with pytest.raises(ValueError, match="device"):
        ib.IntModelRunner("cpu", device="cuda")
    if "int8_conv2d_requant" not in kernel_names():
        with pytest.raises(Exception, match="int8_conv2d_requant"):
            make_runner("cpu", conv_impl="implicit")


# ---- training evaluates the IntModel on the backend asked for ------------------------------


def _missing_cupy() -> None:
    try:
        raise ModuleNotFoundError("No module named 'cupy'")
    except ImportError as e:
        raise CupyUnavailableError(f"CuPy could not be imported ({e})") from e


@pytest.mark.slow  # trains
def test_run_trial_records_its_int_backend(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path))
    monkeypatch.delenv("QATLAB_INT_BACKEND", raising=False)
    cfg = profile("tiny", model="mlp", method="ptq", ste="clipped", epochs=1, limit_train=200, limit_test=100, calib_batches=1)
    r = run_trial(cfg, use_cache=False)
    assert r["status"] == "ok", r["error"]
    assert r["int_backend"] == "cpu" and r["int_error"] is None and r["int_acc"] is not None
    assert r["trial_id"] == cfg.trial_id  # the backend is no part of the trial's identity
    monkeypatch.setenv("QATLAB_INT_BACKEND", "tpu")
    bad = run_trial(cfg, use_cache=False)
    assert bad["status"] == "failed" and "UnknownBackendError" in bad["error"] and "fp32_acc" not in bad
    monkeypatch.setattr(ib, "import_cupy", _missing_cupy)
    gpu = run_trial(cfg, use_cache=False, int_backend="cuda")  # fails before any training
    assert gpu["status"] == "failed" and "gpu-cuda13" in gpu["error"] and "fp32_acc" not in gpu
    assert resolve_int_backend("auto") == ("cuda" if torch.cuda.is_available() and cuda_available() else "cpu")


# ---- GPU: the same models on the CUDA kernels -------------------------------------------


@pytest.mark.gpu
@pytest.mark.parametrize("rounding", ["float", "fixed"])
def test_cuda_new_kinds_equal_cpu(rounding: str) -> None:
    for block in sorted(BLOCKS):
        for bits in (8, 4):
            im = BLOCKS[block](rounding, 0, bits)
            x = images(70, im.input_shape, 13)
            want = run(im, x, backend="cpu")
            for conv_impl in ("im2col", "auto"):
                got = run(im, x, 32, runner=make_runner("cuda", conv_impl=conv_impl))
                assert torch.equal(got.cpu(), want), (block, bits, rounding, conv_impl)


@pytest.mark.gpu
@pytest.mark.parametrize("rounding", ["float", "fixed"])
@pytest.mark.parametrize("name", MODELS)
def test_cuda_equals_cpu(name: str, rounding: str) -> None:
    """Whole models, every quantization setting, batches that are not tile multiples
    (1, 37; 300 = 256 + 44)."""
    x = _images(300, 4)
    for quant in QUANT:
        im = _int_model(name, *quant, rounding)
        want = run(im, x, backend="cpu")
        for batch_size, n in ((1, 12), (37, 300), (256, 300)):
            got = run(im, x[:n], batch_size, backend="cuda")
            assert got.device.type == "cpu" and got.dtype == torch.int32
            assert torch.equal(got, want[:n]), (name, quant, rounding, batch_size)


@pytest.mark.gpu
@pytest.mark.parametrize("conv_impl", ["im2col", "auto"])
@pytest.mark.parametrize("impl", ["mma", "dp4a"])
def test_cuda_impls_and_device_inputs(impl: str, conv_impl: str) -> None:
    im = _int_model("resnet8", 8, 8, "channel", "float")
    x = _images(130, 6)
    want = run(im, x, 64)
    runner = make_runner("cuda", impl=impl, conv_impl=conv_impl)
    got = run(im, x.cuda(), 64, runner=runner)
    assert got.device.type == "cuda"  # codes come back where the inputs were
    assert torch.equal(got.cpu(), want)
    stream = torch.cuda.Stream()
    with torch.cuda.stream(stream):  # kernels follow torch's current stream
        again = run(im, x.cuda(), 64, runner=make_runner("cuda", impl=impl, conv_impl=conv_impl))
    stream.synchronize()
    assert torch.equal(again.cpu(), want)
