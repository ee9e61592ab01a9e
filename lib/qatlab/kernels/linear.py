"""``int8_linear``: the one call the IntModel executor needs for a GEMM-shaped layer."""

from __future__ import annotations

from typing import Any

from .registry import get_kernel


def int8_linear(
    x: Any,
    w: Any,
    bias: Any,
    multiplier: Any,
    zp: int | Any,
    qmin: int,
    qmax: int,
    backend: str = "cuda",
    impl: str = "mma",
) -> Any:
    """Integer linear layer with fused requantization.

    ``y = clamp(round_half_even((x @ w^T + bias) * multiplier) + zp, qmin, qmax)``

    Args:
        x: int8 activation codes [M, K], C-contiguous (already offset into int8; see
            the report / ``_matmul_layer`` offset trick for uint8 activations).
        w: int8 weights [N, K] (natural [out, in] layout), C-contiguous.
        bias: int32-valued [N] (fold any zero-point correction into it).
        multiplier: float64 [N] real requantization multipliers M = s_x*s_w/s_y.
        zp: output zero point (int, or integer vector [N]).
        qmin, qmax: output code range; int8 output if it fits int8, else uint8.
        backend: "cuda" (CuPy kernels) or "cpu" (exact numpy reference).
        impl: "mma" (tensor cores) or "dp4a" (cuda only; cpu ignores it).

    Returns codes [M, N] of the kind of ``x`` (numpy, CuPy or torch).
    """
    if impl not in ("mma", "dp4a"):
        raise ValueError(f"impl must be 'mma' or 'dp4a', got {impl!r}")
    name = "int8_gemm_requant" if impl == "mma" else "int8_gemm_dp4a_requant"
    if backend == "cpu" and type(x).__module__.startswith("torch"):
        import torch

        out = get_kernel(name, "cpu")(x.detach().cpu().numpy(), _np(w), _np(bias), _np(multiplier), _np(zp), qmin, qmax)
        return torch.from_numpy(out)
    return get_kernel(name, backend)(
        x if backend == "cuda" else _np(x), w if backend == "cuda" else _np(w), bias, multiplier, zp, qmin, qmax
    )


def _np(t: Any) -> Any:
    if hasattr(t, "detach"):
        return t.detach().cpu().numpy()
    return t
