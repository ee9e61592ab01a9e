"""The IntModel's GPU backend: each IntOp on the CUDA device, the GEMMs on our int8 kernels.

    from qatlab.intmodel import run, predict
    codes = run(model, x, backend="cuda")          # == run(model, x) bit for bit

Activations stay on the device as int32 torch tensors (the reference's layout: NCHW
codes), so every op that is plain integer torch arithmetic (quantize, add, mul, cat,
pools, mean, lut, clamp, relu and the reshapes, permutes and slices) runs the
reference's own function on them, so the fixed-point widening of mul, cat, mean and
average pools (``pre_shift``) is the reference's by construction. Conv and linear go
through the kernel registry, handed over zero-copy (``__cuda_array_interface__``
in, DLPack out) on torch's current stream:

* the int8 offset trick of the reference (codes − o fit int8 for uint8
  activations), with the correction (o − z)·Σw and the bias folded into one int32
  vector per op, computed once per runner and cached;
* ``float`` rounding: ``int8_gemm_requant``, whose epilogue is the reference's
  requantization (float64 product acc·M, round half to even, + z, clamp);
* ``fixed`` rounding (gemmlowp), or where the fused epilogue cannot hold the
  result: the int32 ``int8_gemm``, then the reference's requantization on the
  device (its own overflow check included);
* conv: the registry's direct convolution kernels where it has them
  (``int8_conv2d[_requant]``: implicit GEMM on tensor cores; ``int8_conv2d_direct*``
  with ``impl="dp4a"``), NHWC activations, KRSC weights, padded taps reading the
  real zero; else (or for grouped convs) im2col in code space (the reference's
  ``conv_rows``) + one GEMM per group. :meth:`IntModelRunner.conv_direct` is where the
  conv kernels plug in;
* depthwise convs (one input channel per group): ``F.conv2d`` in float64 on the
  centred codes (:meth:`IntModelRunner.conv_depthwise`), one launch where the GEMM
  path would make one K = kh·kw GEMM per channel;
* a fused ``clamp`` (and ReLU) narrows the epilogue's output range: the two clamps
  of the reference are one clamp.

Ops the int8 kernels cannot take (weights or activations wider than 8 bits) run the
CPU reference and move back: torch has no integer matmul on CUDA.

``make_runner(kernel_backend="cpu")`` runs the very same orchestration with the
kernels' CPU twins, so everything but the launches is tested without a GPU.
"""

from __future__ import annotations

import contextlib
import dataclasses
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F

from qatlab.intmodel import reference as ref
from qatlab.intmodel.model import ActQ, IntOp

from .cupy_backend import K_ALIGN, import_cupy
from .errors import CupyUnavailableError, KernelInputError
from .registry import BACKENDS, get_kernel, kernel_names
from .validate import output_dtype

CONV_IMPLS = ("auto", "im2col", "implicit")
IMPLS = ("auto", "mma", "dp4a")
# (int32 output, fused requantization) kernel names per impl
_GEMM_KERNELS = {"mma": ("int8_gemm", "int8_gemm_requant"), "dp4a": ("int8_gemm_dp4a", "int8_gemm_dp4a_requant")}
_CONV_KERNELS = {"mma": ("int8_conv2d", "int8_conv2d_requant"), "dp4a": ("int8_conv2d_direct", "int8_conv2d_direct_requant")}


@dataclass
class _Layer:
    """A conv/linear op readied for the kernels (once per runner and op)."""

    op: IntOp
    rounding: str
    dev_op: IntOp  # the op with its tensors on the device, for the reference's functions
    mode: str  # "fused" | "int32" | "reference" (see _mode)
    offset: int  # o of the offset trick: the GEMM sees codes − o
    k: int  # reduction length of one group
    weights: list[torch.Tensor]  # per group: int8 [N_g, K rounded up to K_ALIGN], zero padded
    bias32: list[torch.Tensor]  # per group: int32 [N_g], bias + (o − z)·Σw (fused mode only)
    mult: list[torch.Tensor]  # per group: float64 [N_g]
    bias64: torch.Tensor  # int64 [N], the same folded bias for the unfused path
    lo: int  # the output range's low end (z after a fused ReLU, or a fused clamp's)
    hi: int  # its high end (qmax, or a fused clamp's)
    depthwise: bool = False
    w_krsc: torch.Tensor | None = None  # the conv kernels' weight layout, made on first use
    w_f64: torch.Tensor | None = None  # depthwise weights for F.conv2d, made on first use


class IntModelRunner:
    """An :data:`~qatlab.intmodel.reference.OpRunner` on the kernel registry.

    ``kernel_backend``: ``"cuda"`` (CuPy kernels, tensors on ``device``) or ``"cpu"``
    (the kernels' exact CPU twins, tensors on the CPU). ``impl``: ``"mma"`` (tensor
    cores, sm_80+) or ``"dp4a"``; ``"auto"`` picks mma where the device has it.
    ``conv_impl``: ``"im2col"``, ``"implicit"`` (the registry's ``int8_conv2d*`` kernels)
    or ``"auto"`` (those when registered). One runner per model run: it caches each
    op's device weights and folded bias by identity.
    """

    def __init__(
        self,
        kernel_backend: str = "cuda",
        impl: str = "auto",
        device: torch.device | str | None = None,
        conv_impl: str = "auto",
    ) -> None:
        if kernel_backend not in BACKENDS:
            raise ValueError(f"kernel_backend must be one of {', '.join(BACKENDS)}, got {kernel_backend!r}")
        if impl not in IMPLS:
            raise ValueError(f"impl must be one of {', '.join(IMPLS)}, got {impl!r}")
        if conv_impl not in CONV_IMPLS:
            raise ValueError(f"conv_impl must be one of {', '.join(CONV_IMPLS)}, got {conv_impl!r}")
        self.kernel_backend = kernel_backend
        if device is None:
            device = torch.device("cuda", torch.cuda.current_device()) if kernel_backend == "cuda" else torch.device("cpu")
        self.device = torch.device(device)
        if (self.device.type == "cuda") != (kernel_backend == "cuda"):
            raise ValueError(f"kernel_backend {kernel_backend!r} cannot work on tensors on device {self.device}")
        if impl == "auto":
            impl = "mma" if kernel_backend == "cpu" or torch.cuda.get_device_capability(self.device) >= (8, 0) else "dp4a"
        self.impl = impl
        self.gemm, self.gemm_requant = (get_kernel(n, kernel_backend) for n in _GEMM_KERNELS[impl])
        have_conv = set(_CONV_KERNELS[impl]) <= set(kernel_names())
        if conv_impl == "implicit" and not have_conv:
            raise KernelInputError(
                f"conv_impl='implicit' needs the kernels {' and '.join(_CONV_KERNELS[impl])}, which the registry does not have"
            )
        self.conv: tuple[Callable[..., Any], Callable[..., Any]] | None = None
        if conv_impl != "im2col" and have_conv:
            self.conv = tuple(get_kernel(n, kernel_backend) for n in _CONV_KERNELS[impl])  # type: ignore[assignment]
        self._layers: dict[int, _Layer] = {}
        self._dev_ops: dict[int, tuple[IntOp, IntOp]] = {}
        self._cupy: Any = None

    # ---- the OpRunner protocol ------------------------------------------------------
    def __call__(self, op: IntOp, vals: dict[str, torch.Tensor], qs: dict[str, ActQ], rounding: str) -> torch.Tensor:
        if op.kind == "quantize":
            return ref.quantize_input(vals[op.inputs[0]].to(self.device), op.out_q)
        if op.kind in ("conv", "linear"):
            q, xq = vals[op.inputs[0]], qs[op.inputs[0]]
            layer = self._layer(op, xq, rounding)
            if layer.mode == "reference":
                fn = ref.run_conv if op.kind == "conv" else ref.run_linear
                return fn(q.cpu(), op, xq, rounding).to(self.device)
            if op.kind == "linear":
                return self._matmul_requant(layer, [q.reshape(q.shape[0], -1)], rounding)
            if layer.depthwise:
                return self.conv_depthwise(layer, q, xq, rounding)
            if self.conv is not None and op.attrs["groups"] == 1:
                return self.conv_direct(layer, q, xq, rounding)
            y = self._matmul_requant(layer, ref.conv_rows(q, layer.dev_op, xq), rounding)
            return ref.conv_output(y, layer.dev_op, q.shape[0])
        # Integer torch arithmetic, device-agnostic: the reference's code on our tensors.
        return ref.run_op(self._device_op(op), vals, qs, rounding)

    # ---- GEMM-shaped layers -------------------------------------------------------
    def _matmul_requant(self, layer: _Layer, rows: list[torch.Tensor], rounding: str) -> torch.Tensor:
        """Requantized codes (int32 [M, N]) of per-group code rows [M, K]."""
        a = [self._shifted_int8(r, layer) for r in rows]
        zq = layer.op.out_q
        if layer.mode == "fused":
            ys = [self._call(self.gemm_requant, ag, w, b, m, zq.zero_point, layer.lo, layer.hi)
                  for ag, w, b, m in zip(a, layer.weights, layer.bias32, layer.mult)]  # fmt: skip
            return torch.cat(ys, dim=1).to(torch.int32)
        acc = torch.cat([self._call(self.gemm, ag, w) for ag, w in zip(a, layer.weights)], dim=1)
        total = acc.to(torch.int64) + layer.bias64
        ref._check_int32(total, layer.op)
        return ref._requant(total, layer.dev_op, rounding)

    def conv_direct(self, layer: _Layer, q: torch.Tensor, xq: ActQ, rounding: str) -> torch.Tensor:
        """A conv through the registry's conv kernels (no im2col in memory).

        Their contract (kernels/conv_reference.py): NHWC int8 activations (codes − o),
        KRSC int8 weights, ``pad_value`` = z − o for padded taps (the real zero, as the
        im2col pads with z), and the GEMM's epilogue, so the same folded bias serves.
        """
        a, zq = layer.op.attrs, layer.op.out_q
        x = (q - layer.offset).to(torch.int8).permute(0, 2, 3, 1).contiguous()
        if layer.w_krsc is None:
            layer.w_krsc = layer.dev_op.tensors["weight"].permute(0, 2, 3, 1).contiguous()
        geometry = {"stride": tuple(a["stride"]), "padding": tuple(a["padding"]), "dilation": tuple(a["dilation"]),
                    "pad_value": xq.zero_point - layer.offset}  # fmt: skip
        conv, conv_requant = self.conv  # type: ignore[misc]
        if layer.mode == "fused":
            y = self._call(conv_requant, x, layer.w_krsc, layer.bias32[0], layer.mult[0], zq.zero_point, layer.lo, layer.hi, **geometry)
            # NCHW view of NHWC memory: the next conv's NHWC view of it is free.
            return y.permute(0, 3, 1, 2).to(torch.int32)
        acc = self._call(conv, x, layer.w_krsc, **geometry)  # int32 NHWC = the GEMM's [B·L, N] rows
        total = acc.reshape(-1, acc.shape[-1]).to(torch.int64) + layer.bias64
        ref._check_int32(total, layer.op)
        return ref.conv_output(ref._requant(total, layer.dev_op, rounding), layer.dev_op, q.shape[0])

    def conv_depthwise(self, layer: _Layer, q: torch.Tensor, xq: ActQ, rounding: str) -> torch.Tensor:
        """A depthwise conv as ``F.conv2d`` in float64 on ``q − z`` (zero padding = the real zero).

        Every product and partial sum is an integer far below 2^53 (|w·(q − z)| < 2^31
        per tap), so float64 holds the accumulator exactly in any summation order, and
        float64 convolutions never take TF32 shortcuts.
        """
        a, dev = layer.op.attrs, layer.dev_op
        if layer.w_f64 is None:
            layer.w_f64 = dev.tensors["weight"].to(torch.float64)
        d = (q.to(torch.int64) - xq.zero_point).to(torch.float64)
        acc = F.conv2d(d, layer.w_f64, None, tuple(a["stride"]), tuple(a["padding"]), tuple(a["dilation"]), int(a["groups"]))
        total = acc.to(torch.int64) + dev.tensors["bias"].to(torch.int64).view(1, -1, 1, 1)
        ref._check_int32(total, layer.op)
        # The reference requantizes per channel along the last dim: NHWC for it, NCHW back.
        y = ref._requant(total.permute(0, 2, 3, 1), dev, rounding)
        return y.permute(0, 3, 1, 2).contiguous()

    def _shifted_int8(self, rows: torch.Tensor, layer: _Layer) -> torch.Tensor:
        # Zero-padding K here (weights are padded once) spares the launcher a copy;
        # zero columns add nothing to the dot products.
        m, k = rows.shape
        kp = layer.weights[0].shape[1]
        if kp == k:
            return (rows - layer.offset).to(torch.int8).contiguous()
        a = torch.zeros((m, kp), dtype=torch.int8, device=rows.device)
        a[:, :k] = rows - layer.offset
        return a

    def _layer(self, op: IntOp, xq: ActQ, rounding: str) -> _Layer:
        hit = self._layers.get(id(op))
        if hit is not None and hit.op is op and hit.rounding == rounding:
            return hit
        layer = _prepare(op, xq, rounding, self._device_op(op), self.device)
        self._layers[id(op)] = layer
        return layer

    def _device_op(self, op: IntOp) -> IntOp:
        hit = self._dev_ops.get(id(op))
        if hit is not None and hit[0] is op:
            return hit[1]
        dev = dataclasses.replace(op, tensors={k: v.to(self.device) for k, v in op.tensors.items()})
        self._dev_ops[id(op)] = (op, dev)
        return dev

    def _call(self, kernel: Callable[..., Any], *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.kernel_backend == "cpu":  # the twins take and return numpy
            out = kernel(*(a.numpy() if isinstance(a, torch.Tensor) else a for a in args), **kwargs)
            return torch.from_numpy(out)
        with self._cuda_context():
            return kernel(*args, **kwargs)

    @contextlib.contextmanager
    def _cuda_context(self) -> Iterator[None]:
        # CuPy launches on its own current stream; make that torch's, so kernels and
        # torch ops on the same tensors stay ordered without a synchronize.
        if self._cupy is None:
            self._cupy = import_cupy()
        cupy = self._cupy
        stream = torch.cuda.current_stream(self.device).cuda_stream
        with cupy.cuda.Device(self.device.index), cupy.cuda.ExternalStream(stream):
            yield


def _prepare(op: IntOp, xq: ActQ, rounding: str, dev_op: IntOp, device: torch.device) -> _Layer:
    w = op.tensors["weight"]
    n = w.shape[0]
    groups = op.attrs.get("groups", 1) if op.kind == "conv" else 1
    w2 = w.reshape(n, -1)
    k = w2.shape[1]
    # The reference's offset rule, applied to the code range rather than the data.
    span, offset = ref._shifted(torch.tensor([xq.qmin, xq.qmax]), xq)
    w64 = w2.to(torch.int64)
    folded = op.tensors["bias"].to(torch.int64) + (offset - xq.zero_point) * w64.sum(dim=1)
    # Worst-case |Σ w·(q − o)| per channel: below 2^31 the int32 GEMM cannot wrap;
    # with |bias| too, the fused epilogue's int32 sum cannot either, and the
    # reference's overflow check could never fire.
    acc_bound = w64.abs().sum(dim=1) * int(span.abs().max())
    lo, hi = out_range(op)
    mode = _mode(w.dtype == torch.int8 and int(span.min()) >= -128 and int(span.max()) <= 127,
                 int(acc_bound.max()), int((acc_bound + folded.abs()).max()), rounding, lo, hi)  # fmt: skip
    depthwise = groups > 1 and w.shape[1] == 1 and mode != "reference"
    kp = -(-k // K_ALIGN) * K_ALIGN
    per = n // groups
    weights, bias32, mult = [], [], []
    for g in range(groups if mode != "reference" and not depthwise else 0):
        sl = slice(g * per, (g + 1) * per)
        wp = torch.zeros((per, kp), dtype=torch.int8)
        wp[:, :k] = w2[sl]
        weights.append(wp.to(device))
        if mode == "fused":
            bias32.append(folded[sl].to(torch.int32).to(device))
            mult.append(op.tensors["multiplier"][sl].to(torch.float64).contiguous().to(device))
    return _Layer(op, rounding, dev_op, mode, offset, k, weights, bias32, mult, folded.to(device), lo, hi, depthwise)


def out_range(op: IntOp) -> tuple[int, int]:
    """The one clamp equal to the reference's two: a fused ``clamp`` [c_lo, c_hi] on the
    requantized codes, then [z (after a fused ReLU) or qmin, qmax]."""
    yq = op.out_q
    lo = yq.zero_point if op.attrs.get("relu") else yq.qmin
    c = op.attrs.get("clamp")
    if c is None:
        return lo, yq.qmax
    c_lo, c_hi = int(c[0]), int(c[1])
    if c_lo > c_hi:
        raise KernelInputError(f"layer {op.name}: clamp [{c_lo}, {c_hi}] is empty")
    return min(max(c_lo, lo), yq.qmax), min(max(c_hi, lo), yq.qmax)


def _mode(int8_operands: bool, acc_bound: int, total_bound: int, rounding: str, lo: int, hi: int) -> str:
    """``fused``: one int8_gemm_requant launch. ``int32``: int8_gemm, then the reference's
    requantization on the device. ``reference``: the CPU reference (operands too wide)."""
    if not int8_operands or acc_bound > ref.INT32_MAX:
        return "reference"
    try:
        output_dtype(lo, hi)  # the epilogue stores 8-bit codes
    except KernelInputError:
        return "int32"
    return "fused" if rounding == "float" and total_bound <= ref.INT32_MAX else "int32"


def make_runner(
    kernel_backend: str = "cuda", impl: str = "auto", device: torch.device | str | None = None, conv_impl: str = "auto"
) -> IntModelRunner:
    """An op runner for ``qatlab.intmodel.run(model, x, runner=...)`` (see :class:`IntModelRunner`)."""
    if kernel_backend == "cuda":
        _require_cuda()
    return IntModelRunner(kernel_backend, impl, device, conv_impl)


def cuda_runner() -> IntModelRunner:
    """The ``cuda`` IntModel backend (``run(model, x, backend="cuda")``)."""
    return make_runner("cuda")


def _require_cuda() -> None:
    try:
        import_cupy()
    except CupyUnavailableError as e:
        why = f"{type(e.__cause__).__name__}: {e.__cause__}" if e.__cause__ else "no CUDA device is visible"
        raise CupyUnavailableError(
            f"the IntModel backend 'cuda' cannot start ({why}); on a CUDA 13 driver stack: pip install -e '.[gpu-cuda13]'"
        ) from e
    if not torch.cuda.is_available():
        raise CupyUnavailableError(
            "torch sees no CUDA device (a CPU-only torch build?); the IntModel backend 'cuda' keeps activations on the GPU as torch tensors"
        )


__all__ = ["IntModelRunner", "cuda_runner", "make_runner"]
