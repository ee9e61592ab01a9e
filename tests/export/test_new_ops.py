"""ONNX QDQ export of the IntModel's clamp, lut, mul, cat, mean, adaptive pools,
reshape/permute/slice and depthwise convs, checked by ONNX Runtime.

For every graph: ONNX Runtime fuses what it should (QLinearConv, QLinearMul,
QLinearConcat, QLinearGlobalAveragePool, Gather for the tables), its output codes
equal ``emulate_ort`` exactly, and its predictions agree with the IntModel's.
"""

from __future__ import annotations

import onnx
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch import nn

from qatlab.export import ExportError, UnsupportedLayerError, build_onnx, compare_onnx, emulate_ort, export_onnx, ort_kernels, run_onnx
from qatlab.export.qdq import adaptive_bins, out_bounds
from qatlab.intmodel import IntModel, convert, run
from qatlab.intmodel.model import ActQ, IntOp
from qatlab.intmodel.reference import _saturate, run_op
from qatlab.nn import calibrate, prepare_qat
from qatlab.quant import QuantSpec

from .int_ops import BLOCKS, NetBuilder, images


@pytest.fixture(autouse=True)
def _one_thread():
    # Tiny tensors on a shared 2-core box: intra-op thread hand-offs only slow them down.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def _count(im: IntModel, kind: str, **attrs: object) -> int:
    return sum(op.kind == kind and all(op.attrs.get(k) == v for k, v in attrs.items()) for op in im.ops)


def _gap_means(im: IntModel) -> int:
    # Means over H, W of 4-D values and adaptive pools to 1×1 (the blocks' values are 4-D).
    return sum(
        (op.kind == "mean" and sorted(int(d) for d in op.attrs["dims"]) == [2, 3])
        or (op.kind == "avgpool" and op.attrs.get("adaptive") and tuple(op.attrs["output_size"]) == (1, 1))
        for op in im.ops
    )


def _check_ort(im: IntModel, data: bytes, n: int = 200, seed: int = 7, head: bool = True) -> tuple[torch.Tensor, torch.Tensor]:
    """ORT == emulate_ort exactly; predictions as the IntModel's. A fixed-point IntModel
    rounds apart from ORT's float32 on ~10 % of codes and the untrained heads here have
    near-tied logits (4-bit ones many exact ties), so there only the replay is held to
    (it explains every code). Without a classifier ``head``, the codes themselves are
    compared: ties that float32 breaks apart are rare."""
    x = images(n, im.input_shape, seed)
    out = run_onnx(data, x)
    ref = run(im, x)
    assert out.codes.shape == ref.shape
    # Every difference from the IntModel is ONNX Runtime's own arithmetic, replayed exactly.
    assert torch.equal(emulate_ort(im, x), out.codes)
    if not head:
        assert float((out.codes == ref).float().mean()) >= 0.99
    elif im.rounding == "float":
        # Below 8 bits the head's codes tie often; argmax then flips on a single code.
        bar = 0.995 if im.output_q.qmax - im.output_q.qmin >= 255 else 0.97
        assert float((out.codes.argmax(1) == ref.argmax(1)).float().mean()) >= bar
    return out.codes, ref


# ---- small blocks of MobileNetV2/V3 and ShuffleNet shape, built op by op -----------------


@pytest.mark.parametrize("rounding", ["float", "fixed"])
@pytest.mark.parametrize("bits", [8, 4])
@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_blocks_fuse_and_match_emulation(block: str, bits: int, rounding: str, tmp_path) -> None:
    im = BLOCKS[block](rounding, 0, bits)
    im.validate()
    path = tmp_path / f"{block}.onnx"
    info = export_onnx(im, path)
    assert info.opset == 13
    onnx.checker.check_model(onnx.load(path), full_check=True)
    kernels = ort_kernels(path)
    # Every conv (depthwise included), mul and concat runs as an integer kernel.
    assert "Conv" not in kernels and "Gemm" not in kernels, kernels
    assert kernels.get("QLinearConv", 0) == _count(im, "conv")
    assert kernels.get("QLinearMul", 0) == _count(im, "mul")
    assert kernels.get("QLinearConcat", 0) == _count(im, "cat")
    assert kernels.get("QLinearGlobalAveragePool", 0) == _gap_means(im)
    assert kernels.get("Gather", 0) == _count(im, "lut")
    codes, ref = _check_ort(im, path.read_bytes())
    if rounding == "float" and bits == 8:
        assert float((codes == ref).float().mean()) >= 0.98


def test_blocks_exercise_every_new_kind_and_active_clamps() -> None:
    kinds = {op.kind for f in BLOCKS.values() for op in f().ops}
    assert {"clamp", "lut", "mul", "cat", "mean", "reshape", "permute", "slice", "avgpool"} <= kinds
    ims = [f() for f in BLOCKS.values()]
    # Fused clamps that cut inside the output range (else they would test nothing).
    active = [op for im in ims for op in im.ops if "clamp" in op.attrs and out_bounds(op) != (op.out_q.qmin, op.out_q.qmax)]
    assert {op.kind for op in active} >= {"conv", "add"}
    assert any(op.kind == "conv" and op.attrs["groups"] == op.tensors["weight"].shape[0] > 1 for im in ims for op in im.ops)


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_per_layer_codes_all_explained(block: str) -> None:
    im = BLOCKS[block]()
    data = build_onnx(im).SerializeToString()
    x = images(100, im.input_shape, 3)
    c = compare_onnx(im, data, x, torch.zeros(100, dtype=torch.long), per_layer=True)
    assert c.emulated_agreement == 1.0 and c.agreement >= 0.995
    kinds = {"shuffle_unit": {"lut", "cat", "slice", "permute", "reshape", "clamp", "mean"}, "squeeze_excite": {"lut", "mul", "mean"}}
    assert {ld.kind for ld in c.layers} >= kinds.get(block, {"conv", "add", "avgpool", "reshape"})
    assert all(ld.emulated_mismatch == 0.0 for ld in c.layers), c.summary()


# ---- kind by kind, on random scales -------------------------------------------------------


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), broadcast=st.booleans(), bits=st.sampled_from([8, 5]))
def test_mul_replays_qlinearmul(seed: int, broadcast: bool, bits: int) -> None:
    nb = NetBuilder(images(32, (4, 5, 6), seed), bits, seed=seed)
    x = nb.conv("x_q", 6)
    a = nb.move("slice", x, axis=1, start=0, end=3)
    b = nb.move("slice", x, axis=1, start=3, end=6)
    if broadcast:  # SE gating: [N, C, 1, 1] × [N, C, H, W]
        b = nb.mean(b, [2, 3], keepdim=True)
        a, b = b, a
    y = nb.mul(a, b, clamp=(None, float(nb.real(a).abs().max() * nb.real(b).abs().max()) / 4))
    im = nb.build(y)
    data = build_onnx(im).SerializeToString()
    assert ort_kernels(data).get("QLinearMul") == 1
    _check_ort(im, data, 64, seed, head=False)


@settings(max_examples=15)
@given(seed=st.integers(0, 10_000), axis=st.sampled_from([1, 2, 3, -1]))
def test_cat_replays_qlinearconcat(seed: int, axis: int) -> None:
    nb = NetBuilder(images(32, (3, 5, 6), seed), seed=seed)
    parts = [nb.conv("x_q", 3), nb.conv("x_q", 3, relu=True), nb.conv("x_q", 3)]
    y = nb.cat(parts, axis=axis)
    z = nb.cat([y, nb.cat(parts, axis=axis)], axis=1, share_q_with=0)  # one input copied as is
    im = nb.build(z)
    data = build_onnx(im).SerializeToString()
    assert ort_kernels(data).get("QLinearConcat") == 3
    _check_ort(im, data, 64, seed, head=False)


@pytest.mark.parametrize("signed", [False, True])
def test_lut_gather_is_exact_for_every_code(signed: bool) -> None:
    """The tables, indexed by every code of the input range: ORT == IntModel exactly
    (int8 codes index the table from the back)."""
    shape = (1, 16, 16)
    ramp = torch.linspace(-6, 6, 256).reshape(1, *shape)
    nb = NetBuilder(ramp, signed=signed)
    outs = [nb.lut("x_q", fn) for fn in ("hardswish", "hardsigmoid", "silu", "sigmoid", "tanh", "gelu")]
    y = nb.cat(outs, axis=1, share_q_with=0)
    im = nb.build(y)
    data = build_onnx(im).SerializeToString()
    assert ort_kernels(data).get("Gather") == 6
    xq = nb.q["x_q"]
    every_code = ((torch.arange(xq.qmin, xq.qmax + 1) - xq.zero_point) * xq.scale).float().reshape(1, *shape)
    assert torch.equal(
        run(IntModel(im.ops[:1], "x", "x_q", shape), every_code).flatten(), torch.arange(xq.qmin, xq.qmax + 1, dtype=torch.int32)
    )
    for x in (every_code, images(20, shape, 1) * 3):
        out = run_onnx(data, x)
        assert torch.equal(out.codes, run(im, x))


@settings(max_examples=12)
@given(
    h=st.integers(1, 9),
    w=st.integers(1, 9),
    oh=st.integers(1, 5),
    ow=st.integers(1, 5),
    seed=st.integers(0, 1000),
    rounding=st.sampled_from(["float", "fixed"]),
)
def test_adaptive_pool_uneven_bins(h: int, w: int, oh: int, ow: int, seed: int, rounding: str) -> None:
    """Uneven (and overlapping) bins: the float64 form reproduces the IntModel's float
    requantization bit for bit; the 1×1 pool is QLinearGlobalAveragePool."""
    nb = NetBuilder(images(24, (3, h, w), seed), rounding=rounding, seed=seed)
    y = nb.adaptive_avgpool("x_q", (oh, ow))
    im = nb.build(y)
    # The exporter's bins are PyTorch's: their means are adaptive_avg_pool2d's.
    t = torch.rand(1, 1, h, w, dtype=torch.float64)
    means = torch.tensor([[float(t[0, 0, r0:r1, c0:c1].mean()) for c0, c1 in adaptive_bins(w, ow)] for r0, r1 in adaptive_bins(h, oh)])
    assert torch.allclose(means, torch.nn.functional.adaptive_avg_pool2d(t, (oh, ow))[0, 0].float())
    data = build_onnx(im).SerializeToString()
    x = images(24, im.input_shape, seed + 1)
    out = run_onnx(data, x)
    assert torch.equal(emulate_ort(im, x), out.codes)
    if (oh, ow) != (1, 1) and rounding == "float":
        assert torch.equal(out.codes, run(im, x))
    elif (oh, ow) != (1, 1):
        # Fixed point widens the bin sums before its multiply, so it rounds as the float64
        # form does, but for half-way ties (away from zero) and near-ties within 2^-31.
        d = (out.codes.to(torch.int64) - run(im, x)).abs()
        assert int(d.max()) <= 1 and float((d > 0).float().mean()) <= 0.001
    if (oh, ow) == (1, 1):
        assert "QLinearGlobalAveragePool" in ort_kernels(data)


@pytest.mark.parametrize("rounding", ["float", "fixed"])
@pytest.mark.parametrize("dims, keepdim", [([2, 3], True), ([2, 3], False), ([1], True), ([1, 3], False), ([-1], False), ([1, 2, 3], True)])
def test_mean_forms(dims: list[int], keepdim: bool, rounding: str) -> None:
    """The exact form is the IntModel's float rounding, and its fixed rounding too (the
    sums are widened before the fixed-point multiply; the random scales here leave no
    half-way ties)."""
    nb = NetBuilder(images(32, (4, 5, 6), 0), rounding=rounding)
    x = nb.conv("x_q", 4)
    im = nb.build(nb.mean(x, dims, keepdim))
    data = build_onnx(im).SerializeToString()
    kernels = ort_kernels(data)
    x_ = images(100, im.input_shape, 1)
    out = run_onnx(data, x_)
    assert torch.equal(emulate_ort(im, x_), out.codes)
    if sorted(d % 4 for d in dims) == [2, 3]:
        assert "QLinearGlobalAveragePool" in kernels
    else:  # the exact form: ONNX Runtime computes the IntModel's own codes
        assert "ReduceSum" in kernels
        # Fed ORT's own input codes (the conv before it rounds in float32 there), the
        # reference's mean in either rounding mode is what ORT computes.
        seen: dict[str, list[torch.Tensor]] = {}
        emulate_ort(im, x_, capture=seen)
        mean = im.ops[-1]
        vals = {i: seen[i][0] for i in mean.inputs}
        assert torch.equal(out.codes, run_op(mean, vals, {op.output: op.out_q for op in im.ops}, rounding))
        if rounding == "float":
            assert torch.equal(out.codes, run(im, x_))


@pytest.mark.parametrize("bits, signed", [(8, True), (8, False), (10, False)])
def test_data_movement_and_clamp_are_exact_on_codes(bits: int, signed: bool) -> None:
    """Integer Transpose/Slice/Reshape/Clip on 8-bit codes; 16-bit codes (which ORT
    cannot Clip) are clamped in float at the bounds' real values: the same codes."""
    nb = NetBuilder(images(32, (4, 5, 6), 2), bits, signed=signed)
    x = nb.move("permute", "x_q", dims=(0, 3, 1, 2))
    x = nb.move("slice", x, axis=2, start=1, end=4)
    x = nb.move("slice", x, axis=-1, start=1, end=5)
    x = nb.move("reshape", x, out_shape=(6, 12))
    q = nb.q[x]
    lo, hi = q.qmin + (q.qmax - q.qmin) // 5, q.qmax - (q.qmax - q.qmin) // 4
    x = nb.clamp(x, lo, hi)
    im = nb.build(x)
    data = build_onnx(im).SerializeToString()
    types = {n.op_type for n in onnx.load_from_string(data).graph.node}
    assert {"Transpose", "Slice", "Reshape", "Clip"} <= types
    xs = images(50, im.input_shape, 4)
    out = run_onnx(data, xs)
    assert torch.equal(out.codes, run(im, xs))
    assert int(out.codes.min()) == lo and int(out.codes.max()) == hi


@settings(max_examples=60)
@given(
    qmin=st.sampled_from([0, -128, 0]),
    span=st.sampled_from([15, 63, 255]),
    z=st.integers(0, 255),
    relu=st.booleans(),
    c_lo=st.integers(-300, 300),
    width=st.integers(0, 400),
)
def test_out_bounds_is_the_references_two_clamps(qmin: int, span: int, z: int, relu: bool, c_lo: int, width: int) -> None:
    q = ActQ(0.1, qmin + z % (span + 1), qmin, qmin + span)
    op = IntOp("conv", "c", ["x"], "c", q, {"relu": relu, "clamp": [c_lo, c_lo + width]})
    y = torch.arange(-700, 700)
    lo, hi = out_bounds(op)
    assert torch.equal(y.clamp(lo, hi).to(torch.int32), _saturate(y, op))


# ---- the exporter's checks -------------------------------------------------------------------


def _one_op(kind: str, xq: ActQ, out_q: ActQ, attrs: dict, tensors: dict | None = None, shape=(2, 3, 4)) -> IntModel:
    ops = [
        IntOp("quantize", "q", ["x"], "q", xq, {"out_shape": shape}),
        IntOp(kind, "op", ["q"], "op", out_q, {"out_shape": attrs.pop("out_shape", shape), **attrs}, tensors or {}),
    ]
    return IntModel(ops, "x", "op", shape)


def test_bad_new_ops_are_named() -> None:
    u8, wide = ActQ(0.1, 3, 0, 255), ActQ(0.1, 3, 0, 511)
    with pytest.raises(UnsupportedLayerError, match="op .lut.*8-bit input codes"):
        build_onnx(_one_op("lut", wide, u8, {"fn": "tanh"}, {"table": torch.zeros(512, dtype=torch.int32)}))
    with pytest.raises(ExportError, match="table has 10 entries"):
        build_onnx(_one_op("lut", u8, u8, {"fn": "tanh"}, {"table": torch.zeros(10, dtype=torch.int32)}))
    with pytest.raises(ExportError, match="leave the output range"):
        build_onnx(_one_op("lut", u8, ActQ(0.1, 0, 0, 15), {"fn": "tanh"}, {"table": torch.full((256,), 16, dtype=torch.int32)}))
    with pytest.raises(UnsupportedLayerError, match="op .permute.*keeping the batch first"):
        build_onnx(_one_op("permute", u8, u8, {"dims": [1, 0, 2, 3]}))
    with pytest.raises(UnsupportedLayerError, match="op .slice.*non-batch axis"):
        build_onnx(_one_op("slice", u8, u8, {"axis": 0, "start": 0, "end": 1}))
    with pytest.raises(UnsupportedLayerError, match="op .clamp.*differ from its input"):
        build_onnx(_one_op("clamp", u8, ActQ(0.2, 3, 0, 255), {"lo": 0, "hi": 9}))
    with pytest.raises(UnsupportedLayerError, match="op .mean.*non-batch axes"):
        build_onnx(_one_op("mean", u8, u8, {"dims": [0], "keepdim": True}, {"multiplier": torch.ones(1, dtype=torch.float64)}))
    with pytest.raises(ExportError, match="multiplier has shape"):
        build_onnx(
            _one_op(
                "mean", u8, u8, {"dims": [1], "keepdim": True, "out_shape": (1, 3, 4)}, {"multiplier": torch.ones(2, dtype=torch.float64)}
            )
        )


@pytest.mark.parametrize("block", sorted(BLOCKS))
def test_int4_form_runs_the_new_kinds(block: str) -> None:
    """4-bit types (opset 21): ONNX Runtime has no 4-bit kernels and cannot Reshape or
    Slice them, so those ops move floats into 8-bit codes; tables index 16 entries."""
    im = BLOCKS[block]("float", 0, 4)
    proto = build_onnx(im, low_bit="int4")
    types = {i.name: i.data_type for i in proto.graph.initializer}
    assert onnx.TensorProto.UINT4 in types.values()
    # A table indexed by 4-bit codes has 16 entries (inputs that moved into 8 bits: 256).
    sizes = {len(onnx.numpy_helper.to_array(i)) for i in proto.graph.initializer if i.name.endswith(".table")}
    assert sizes <= {16, 256} and (16 in sizes) == any(op.kind == "lut" for op in im.ops)
    x = images(200, im.input_shape, 3)
    out = run_onnx(proto.SerializeToString(), x)
    ref = run(im, x)
    assert float((out.codes == ref).float().mean()) >= 0.95
    assert float((out.codes.argmax(1) == ref.argmax(1)).float().mean()) >= 0.95


# ---- end to end: prepare_qat → calibrate → convert → export ------------------------------


class _MobileBlock(nn.Module):
    """Hardswish stem, depthwise + ReLU6, an SE gate, a concat and an uneven adaptive pool."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.Hardswish())
        self.dw = nn.Conv2d(8, 8, 3, padding=1, groups=8)
        self.act = nn.ReLU6()
        self.se1, self.se2, self.gate = nn.Conv2d(8, 4, 1), nn.Conv2d(4, 8, 1), nn.Hardsigmoid()
        self.pool = nn.AdaptiveAvgPool2d((3, 2))
        self.fc = nn.Linear(16 * 3 * 2, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        y = self.act(self.dw(x))
        y = y * self.gate(self.se2(torch.relu(self.se1(y.mean((2, 3), keepdim=True)))))
        return self.fc(torch.flatten(self.pool(torch.cat([x, y], 1)), 1))


class _ShuffleBlock(nn.Module):
    """Channel split (chunk), a depthwise branch, cat, channel shuffle, Hardtanh, mean."""

    def __init__(self) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.dw, self.pw = nn.Conv2d(4, 4, 3, padding=1, groups=4), nn.Conv2d(4, 4, 1)
        self.fc = nn.Linear(8, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a, b = self.stem(x).chunk(2, dim=1)
        y = torch.cat([a, torch.relu(self.pw(self.dw(b)))], 1)
        n, c, h, w = y.shape
        y = y.view(n, 2, c // 2, h, w).transpose(1, 2).reshape(n, c, h, w)
        return self.fc(nn.functional.hardtanh(y, 0.0, 3.0).mean((2, 3)))


_E2E = {
    "mobile": (
        _MobileBlock,
        {"lut", "mul", "cat", "mean", "avgpool"},
        {"QLinearMul", "QLinearConcat", "QLinearGlobalAveragePool", "Gather"},
    ),
    "shuffle": (_ShuffleBlock, {"slice", "cat", "reshape", "permute", "clamp", "mean"}, {"QLinearConcat", "QLinearGlobalAveragePool"}),
}


@pytest.mark.parametrize("rounding", ["float", "fixed"])
@pytest.mark.parametrize("block", sorted(_E2E))
def test_converted_blocks_end_to_end(block: str, rounding: str, tmp_path) -> None:
    make, kinds, fused = _E2E[block]
    torch.manual_seed(0)
    m = make()
    m.train()
    with torch.no_grad():
        m(images(64, (3, 8, 8), 0))
    q = prepare_qat(m.eval(), QuantSpec(bits=8, symmetric=True, granularity="channel", axis=0), QuantSpec(bits=8, symmetric=False))
    calibrate(q, [images(64, (3, 8, 8), i) for i in (1, 2)])
    im = convert(q.eval(), (3, 8, 8), rounding)
    assert kinds <= {op.kind for op in im.ops}
    path = tmp_path / f"{block}.onnx"
    export_onnx(im, path)
    kernels = ort_kernels(path)
    assert {"QLinearConv"} | fused <= set(kernels)
    assert "Conv" not in kernels
    x = images(300, (3, 8, 8), 9)
    c = compare_onnx(im, path, x, torch.zeros(300, dtype=torch.long), fake_quant=q)
    assert c.emulated_agreement == 1.0
    # Fixed point rounds apart from ORT's float32 on many codes; near-tied untrained logits flip.
    assert c.agreement >= (0.995 if rounding == "float" else 0.95)
    assert c.fq_acc is not None
