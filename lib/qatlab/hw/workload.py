"""Layer workloads: the one layer list both simulators and the cost tables read.

Sources: SCALE-Sim topology CSV files (conv and GEMM forms), Python objects, and
(via :func:`from_intmodel`, added with the integer model) a converted network.

Geometry follows SCALE-Sim: no padding is applied (a 32x32 input with a 3x3
filter gives 30x30 outputs), so a padded layer is described by its padded input.
"""

from __future__ import annotations

import csv
import os
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path


class TopologyError(ValueError):
    """A topology file that cannot be read; the message names the file, line and field."""


@dataclass(frozen=True)
class Layer:
    """One convolution (or GEMM, as a 1x1-output-width convolution) layer.

    GEMM view: ``M = batch · ofmap_h · ofmap_w`` output pixels, ``K = filter_h ·
    filter_w · channels`` reduction length, ``N = num_filters`` output channels.
    ``sparsity = (n, m)``: n of every m weights are non-zero (SCALE-Sim's N:M).
    """

    name: str
    ifmap_h: int
    ifmap_w: int
    filter_h: int
    filter_w: int
    channels: int
    num_filters: int
    stride_h: int = 1
    stride_w: int = 1
    batch: int = 1
    w_bits: int = 8
    a_bits: int = 8
    sparsity: tuple[int, int] = (1, 1)
    kind: str = "conv"  # conv | gemm (fully connected / matmul)
    meta: dict = field(default_factory=dict, compare=False, hash=False)

    def __post_init__(self) -> None:
        for f in (
            "ifmap_h",
            "ifmap_w",
            "filter_h",
            "filter_w",
            "channels",
            "num_filters",
            "stride_h",
            "stride_w",
            "batch",
            "w_bits",
            "a_bits",
        ):
            v = getattr(self, f)
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"layer {self.name!r}: {f} must be a positive integer, got {v!r}")
        if self.filter_h > self.ifmap_h or self.filter_w > self.ifmap_w:
            raise ValueError(
                f"layer {self.name!r}: filter {self.filter_h}x{self.filter_w} is larger than "
                f"the (unpadded) input {self.ifmap_h}x{self.ifmap_w}"
            )
        n, m = self.sparsity
        if not (1 <= n <= m):
            raise ValueError(f"layer {self.name!r}: sparsity {n}:{m} must have 1 <= N <= M")
        if self.kind not in ("conv", "gemm"):
            raise ValueError(f"layer {self.name!r}: kind must be 'conv' or 'gemm', got {self.kind!r}")

    @property
    def ofmap_h(self) -> int:
        return (self.ifmap_h - self.filter_h) // self.stride_h + 1

    @property
    def ofmap_w(self) -> int:
        return (self.ifmap_w - self.filter_w) // self.stride_w + 1

    @property
    def M(self) -> int:
        return self.batch * self.ofmap_h * self.ofmap_w

    @property
    def K(self) -> int:
        return self.filter_h * self.filter_w * self.channels

    @property
    def N(self) -> int:
        return self.num_filters

    @property
    def macs(self) -> int:
        return self.M * self.N * self.K

    @property
    def weights(self) -> int:
        return self.K * self.N

    @property
    def density(self) -> float:
        return self.sparsity[0] / self.sparsity[1]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["sparsity"] = f"{self.sparsity[0]}:{self.sparsity[1]}"
        return d

    @classmethod
    def gemm(cls, name: str, M: int, N: int, K: int, **kw: object) -> "Layer":
        """A GEMM ``[M, K] x [K, N]`` as SCALE-Sim encodes it: ifmap M x K, filter 1 x K, 1 channel."""
        return cls(name, M, K, 1, K, 1, N, kind="gemm", **kw)  # type: ignore[arg-type]


_CONV_FIELDS = ("IFMAP Height", "IFMAP Width", "Filter Height", "Filter Width", "Channels", "Num Filter", "Strides")


def read_topology(path: str | os.PathLike[str]) -> list[Layer]:
    """Read a SCALE-Sim topology CSV: conv form or GEMM form (``Layer, M, N, K`` header).

    Conv rows: name, ifmap h, ifmap w, filter h, filter w, channels, filters, stride[, N:M].
    GEMM rows: name, M, N, K[, N:M]. Like SCALE-Sim, a layer whose name contains ``DP``
    is depthwise and expands into one single-channel layer per channel. Trailing
    empty fields (SCALE-Sim's files end rows with a comma) and extra fields that are
    not ``N:M`` (notes such as ``#dw``, a ``Target`` column) are ignored.
    """
    from qatlab.hw.limits import MAX_TOPOLOGY_LAYERS, InputFileError, read_text

    p = Path(path)
    try:
        text = read_text(p, "topology")
        rows = [r for r in csv.reader(text.splitlines())]
    except InputFileError as e:
        raise TopologyError(str(e)) from None
    except csv.Error as e:
        raise TopologyError(f"{p}: not a CSV topology: {e}") from None
    rows = [[c.strip() for c in r] for r in rows]
    numbered = [(i + 1, r) for i, r in enumerate(rows) if any(r)]
    if not numbered:
        raise TopologyError(f"{p}: empty topology file")
    _, header = numbered[0]
    header = _trim(header)
    gemm = [h.upper() for h in header[1:4]] == ["M", "N", "K"]
    layers: list[Layer] = []
    for lineno, row in numbered[1:]:
        row = _trim(row)
        where = f"{p}:{lineno}"
        need = 4 if gemm else 8
        if len(row) < need:
            raise TopologyError(f"{where}: expected at least {need} fields, got {len(row)}: {','.join(row)}")
        name = row[0]
        if not name:
            raise TopologyError(f"{where}: empty layer name")
        # SCALE-Sim reads an N:M sparsity field after the geometry and drops anything
        # else (its files carry notes such as '#dw' or a 'Target' column there).
        extra = [f for f in row[need:] if ":" in f]
        sparsity = _sparsity(extra[0], where) if extra else (1, 1)
        try:
            if gemm:
                M, N, K = (_int(row[i], h, where) for i, h in zip((1, 2, 3), ("M", "N", "K")))
                layers.append(Layer.gemm(name, M, N, K, sparsity=sparsity))
                continue
            vals = [_int(row[i + 1], h, where) for i, h in enumerate(_CONV_FIELDS)]
            ih, iw, fh, fw, ch, nf, st = vals
            if len(layers) + (ch if "DP" in name else 1) > MAX_TOPOLOGY_LAYERS:
                raise TopologyError(f"{where}: more than {MAX_TOPOLOGY_LAYERS} layers (depthwise layers count one per channel)")
            if "DP" in name:
                layers.extend(Layer(f"{name}Channel_{c}", ih, iw, fh, fw, 1, nf, st, st, sparsity=sparsity) for c in range(ch))
            else:
                layers.append(Layer(name, ih, iw, fh, fw, ch, nf, st, st, sparsity=sparsity))
        except TopologyError:
            raise
        except ValueError as e:
            raise TopologyError(f"{where}: {e}") from e
    if not layers:
        raise TopologyError(f"{p}: no layers after the header")
    return layers


def write_topology(layers: list[Layer], path: str | os.PathLike[str]) -> None:
    """Write layers as a SCALE-Sim conv topology (atomically: temp file, then rename)."""
    p = Path(path)
    lines = ["Layer name, IFMAP Height, IFMAP Width, Filter Height, Filter Width, Channels, Num Filter, Strides, Sparsity,\n"]
    for lay in layers:
        if lay.stride_h != lay.stride_w:
            raise ValueError(f"layer {lay.name!r}: SCALE-Sim topologies take one stride, got {lay.stride_h}x{lay.stride_w}")
        if lay.batch != 1:
            raise ValueError(f"layer {lay.name!r}: SCALE-Sim topologies have no batch, got batch {lay.batch}")
        lines.append(
            f"{lay.name}, {lay.ifmap_h}, {lay.ifmap_w}, {lay.filter_h}, {lay.filter_w}, {lay.channels}, "
            f"{lay.num_filters}, {lay.stride_h}, {lay.sparsity[0]}:{lay.sparsity[1]},\n"
        )
    from qatlab.atomic import write_text  # tempfile and shutil only when a file is written

    write_text(p, "".join(lines), mkdir=False)


def _trim(row: list[str]) -> list[str]:
    while row and row[-1] == "":
        row = row[:-1]
    return row


def _int(text: str, fieldname: str, where: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise TopologyError(f"{where}: field {fieldname!r} must be an integer, got {text!r}") from None
    if v < 1:
        raise TopologyError(f"{where}: field {fieldname!r} must be positive, got {v}")
    return v


def _sparsity(text: str, where: str) -> tuple[int, int]:
    parts = text.split(":")
    if len(parts) != 2 or not all(s.strip().isdigit() for s in parts):
        raise TopologyError(f"{where}: sparsity must look like N:M, got {text!r}")
    n, m = int(parts[0]), int(parts[1])
    if not 1 <= n <= m:
        raise TopologyError(f"{where}: sparsity {text!r} must have 1 <= N <= M")
    return n, m


def from_intmodel(model: "IntModel", batch: int = 1, per_group: bool = False) -> list[Layer]:  # noqa: F821 - imported lazily
    """The conv and linear layers of an IntModel as workloads (padding folded into the input).

    A grouped convolution is one layer per op described by one group's channel count
    (MACs stay right; the FPGA model's one-entry-per-op view), or with ``per_group``
    one layer per group, as SCALE-Sim maps it (:func:`group_layers`). A dilated kernel
    is described by its effective (dilated) extent.
    """
    layers: list[Layer] = []
    for op in model.compute_ops():
        if per_group:
            layers.extend(group_layers(op, batch))
        else:
            layers.append(op_layer(op, batch))
    return layers


def op_layer(op: "IntOp", batch: int = 1) -> Layer:  # noqa: F821
    """One conv or linear op as one workload layer (a grouped conv by one group's channels)."""
    a = op.attrs
    w = op.tensors["weight"]
    w_bits, a_bits = int(a["w_bits"]), int(a["a_bits"])
    density = float((w != 0).float().mean()) if w.numel() else 1.0
    meta = {"op": op.name, "weight_density": density, "relu": bool(a.get("relu", False))}
    if op.kind == "linear":
        out_f, in_f = w.shape
        return Layer.gemm(op.name, batch, int(out_f), int(in_f), w_bits=w_bits, a_bits=a_bits, meta=meta)
    c, h, wd = a["in_shape"]
    ph, pw = a["padding"]
    kh, kw = a["kernel"]
    dh, dw = a["dilation"]
    return Layer(
        op.name,
        int(h + 2 * ph),
        int(wd + 2 * pw),
        int((kh - 1) * dh + 1),
        int((kw - 1) * dw + 1),
        int(c // a["groups"]),
        int(w.shape[0]),
        int(a["stride"][0]),
        int(a["stride"][1]),
        batch=batch,
        w_bits=w_bits,
        a_bits=a_bits,
        meta={**meta, "groups": int(a["groups"])},
    )


def group_layers(op: "IntOp", batch: int = 1) -> list[Layer]:  # noqa: F821
    """A conv op as SCALE-Sim runs a grouped convolution: one layer per group.

    Group g convolves its ``C/G`` input channels with its ``N/G`` filters, an
    independent GEMM of ``K = kh·kw·C/G`` and ``N/G`` columns: SCALE-Sim's own
    depthwise handling (a topology layer named ``DP...`` becomes one single-channel
    layer per channel) is the ``C/G = 1`` case. Ungrouped ops give their one layer.
    """
    full = op_layer(op, batch)
    g = int(op.attrs.get("groups", 1)) if op.kind == "conv" else 1
    if g == 1:
        return [full]
    if full.num_filters % g:
        raise ValueError(f"op {op.name!r}: {full.num_filters} filters do not split into {g} groups")
    return [replace(full, name=f"{op.name}.g{i}", num_filters=full.num_filters // g, meta={**full.meta, "group": i}) for i in range(g)]
