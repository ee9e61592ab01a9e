"""A layer seen as FINN sees it: a matrix-vector unit (MVAU) and the unit that feeds it.

FINN lowers a convolution to a sliding-window unit (SWU, "ConvolutionInputGenerator")
that turns the input image into im2col vectors, followed by an MVAU that multiplies
each vector by the weight matrix. In FINN's names, per layer:

* ``MH`` = output channels (the GEMM view's N),
* ``MW`` = kernel_h · kernel_w · input channels (the reduction length K),
* output vectors ("numInputVectors") = output pixels = ofmap_h · ofmap_w (· batch).

Which unit feeds the MVAU:

* ``swu``  — a real window (kernel larger than 1x1);
* ``ds``   — a 1x1 kernel with stride > 1: FINN's DownSampler, which drops pixels;
* ``none`` — a 1x1 kernel with stride 1 or a GEMM / fully connected layer: the input
  stream already is the sequence of vectors.

Streams carry activations in HWC raster order (pixel by pixel, channels innermost),
as FINN's NHWC dataflow does; im2col vectors are ordered (kernel row, kernel column,
channel), the order of FINN's SWU output and hence of the weight matrix columns.
"""

from __future__ import annotations

from dataclasses import dataclass

from qatlab.hw.workload import Layer


@dataclass(frozen=True)
class Geometry:
    name: str
    kind: str  # conv | gemm
    mh: int
    mw: int
    ifm_h: int
    ifm_w: int
    channels: int  # elements per input pixel
    k_h: int
    k_w: int
    stride_h: int
    stride_w: int
    ofm_h: int
    ofm_w: int
    batch: int
    unit: str  # swu | ds | none

    @property
    def pixels(self) -> int:
        """Output vectors per frame (FINN's numInputVectors product)."""
        return self.batch * self.ofm_h * self.ofm_w

    @property
    def in_elems(self) -> int:
        """Input elements per frame (what the layer's input stream carries)."""
        return self.batch * self.ifm_h * self.ifm_w * self.channels

    @property
    def out_elems(self) -> int:
        return self.pixels * self.mh

    @property
    def macs(self) -> int:
        return self.pixels * self.mh * self.mw


def geometry(layer: Layer) -> Geometry:
    """The FINN view of one workload layer."""
    if layer.kind == "gemm":
        # Layer.gemm stores [M, K] x [K, N] as an M x K "image" with a 1 x K filter and
        # one channel: M output vectors of length K, no window to slide.
        m, k = layer.ifmap_h, layer.ifmap_w
        return Geometry(layer.name, "gemm", layer.num_filters, k, m, 1, k, 1, 1, 1, 1, m, 1, layer.batch, "none")
    if layer.filter_h == 1 and layer.filter_w == 1:
        unit = "none" if (layer.stride_h == 1 and layer.stride_w == 1) else "ds"
    else:
        unit = "swu"
    return Geometry(
        layer.name,
        "conv",
        layer.num_filters,
        layer.K,
        layer.ifmap_h,
        layer.ifmap_w,
        layer.channels,
        layer.filter_h,
        layer.filter_w,
        layer.stride_h,
        layer.stride_w,
        layer.ofmap_h,
        layer.ofmap_w,
        layer.batch,
        unit,
    )


def chained(prev: Geometry, nxt: Geometry) -> bool:
    """Whether ``prev``'s output stream is exactly ``nxt``'s input stream (same element
    count; a flatten between a conv and a fully connected layer keeps HWC order)."""
    return prev.out_elems == nxt.in_elems
