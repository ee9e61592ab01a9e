"""Granularity as a reshape: every granularity becomes a 2-D ``rows`` view [P, N].

One row per parameter set (P scales), N values sharing it. Estimators reduce
along dim 1; quantization broadcasts ``scale[:, None]``. This keeps every
estimator and kernel granularity-agnostic.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from .spec import QuantSpec


@dataclass(frozen=True)
class Layout:
    """Where a tensor's parameter sets lie; enough to go to rows and back."""

    kind: str  # tensor | channel | group | element
    axis: int = 0  # normalised (non-negative) channel axis; 0 for tensor/element
    group_size: int | None = None

    def num_params(self, shape: torch.Size | tuple[int, ...]) -> int:
        numel = 1
        for d in shape:
            numel *= d
        if self.kind == "tensor":
            return 1
        if self.kind == "element":
            return numel
        channels = shape[self.axis]
        if self.kind == "channel":
            return channels
        return numel // self.group_size  # type: ignore[operator]

    def param_shape(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, ...]:
        """Shape of the scale tensor laid out to broadcast naturally (for reports)."""
        if self.kind == "tensor":
            return ()
        if self.kind == "channel":
            return (shape[self.axis],)
        if self.kind == "element":
            return tuple(shape)
        return (shape[self.axis], self.num_params(shape) // max(shape[self.axis], 1))


def layout_for(x: torch.Tensor, spec: QuantSpec) -> Layout:
    """Validate ``spec``'s granularity against ``x`` and return its Layout."""
    kind = spec.granularity_kind
    if kind in ("tensor", "element"):
        return Layout(kind)
    if x.dim() == 0:
        raise ValueError(f"axis: granularity {spec.granularity!r} needs a tensor with at least 1 dimension, got a scalar")
    axis = spec.axis
    if not -x.dim() <= axis < x.dim():
        raise ValueError(f"axis {axis} is out of range for a tensor of shape {tuple(x.shape)}")
    axis %= x.dim()
    if kind == "channel":
        return Layout(kind, axis)
    g = spec.group_size
    assert g is not None
    per_channel = x.numel() // max(x.shape[axis], 1)
    if per_channel % g:
        raise ValueError(
            f"granularity {spec.granularity!r}: group size {g} does not divide the {per_channel} "
            f"values per channel of a tensor of shape {tuple(x.shape)} (axis {axis})"
        )
    return Layout(kind, axis, g)


def to_rows(x: torch.Tensor, layout: Layout) -> torch.Tensor:
    """View (or copy, for a non-leading channel axis) ``x`` as [P, N]."""
    if layout.kind == "tensor":
        return x.reshape(1, -1)
    if layout.kind == "element":
        return x.reshape(-1, 1)
    moved = x.movedim(layout.axis, 0) if layout.axis else x
    channels = x.shape[layout.axis]
    rows = moved.reshape(channels, -1)
    if layout.kind == "group":
        rows = rows.reshape(-1, layout.group_size)
    return rows


def from_rows(rows: torch.Tensor, shape: torch.Size | tuple[int, ...], layout: Layout) -> torch.Tensor:
    """Inverse of :func:`to_rows`."""
    if layout.kind in ("tensor", "element") or layout.axis == 0:
        return rows.reshape(shape)
    moved_shape = (shape[layout.axis],) + tuple(s for i, s in enumerate(shape) if i != layout.axis)
    return rows.reshape(moved_shape).movedim(0, layout.axis)
