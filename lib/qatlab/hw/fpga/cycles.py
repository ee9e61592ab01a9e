"""Cycle counts per frame of FINN's streaming units (the "expected cycles" of its cost model).

* MVAU (FINN ``MVAU.get_exp_cycles``, src/finn/custom_op/fpgadataflow/
  matrixvectoractivation.py): ``(MH/PE) · (MW/SIMD) · output vectors``. Each cycle the
  PE x SIMD array takes SIMD inputs and PE rows of weights.
* SWU, HLS (the qatlab cost model's; FINN v0.10 ``ConvolutionInputGenerator_hls.get_exp_cycles``
  for the 2D non-depthwise finn-hlslib ``ConvolutionInputGenerator``): first ``ifm_w · k_h · C/SIMD`` cycles
  fill k_h input rows, then each output row takes ``max(write, read)`` cycles, with
  ``write = ofm_w · k_w · k_h · C/SIMD`` words out and ``read = stride · ifm_w · C/SIMD``
  words of the next rows in::

      cycles = ifm_w · k_h · C/SIMD + ofm_h · max(ofm_w · k_w · k_h · C/SIMD, stride · ifm_w · C/SIMD)

  FINN writes ``stride_w`` in the read term; the rows read per output row are
  ``stride_h`` of them, which we use (the two agree for the square strides SCALE-Sim
  topologies have). Dilation is 1.
* SWU, RTL (FINN ``ConvolutionInputGenerator_rtl.get_exp_cycles``, the sliding window
  FINN's default build uses; dilation 1): the default style fills
  ``((k_h-1)·ifm_w + k_w)·C/SIMD`` words, then per output row
  ``max(ofm_w·k_w·k_h·C/SIMD, stride_w·ifm_w·C/SIMD)`` (the depthwise variant adds its
  channel-fold replays); the parallel-window style (SIMD = C, a whole window per cycle)
  takes one cycle per input pixel plus 2; a 1D window ``ofm_w·k_w·C/SIMD + 2``.
* DownSampler (FINN ``DownSampler.get_exp_cycles``): ``C/SIMD · ifm_h · ifm_w``; finn-plus
  has none and uses a 1x1 RTL window instead, two cycles more (the FINN cost model's).

Every count is multiplied by the batch (FINN's ``numReps``).
"""

from __future__ import annotations

from .geometry import Geometry


def mvau_cycles(g: Geometry, pe: int, simd: int) -> int:
    return (g.mh // pe) * (g.mw // simd) * g.pixels


def swu_cycles(g: Geometry, swu_simd: int) -> int:
    """Sliding-window unit cycles per frame; 0 where the layer has none (1x1, GEMM)."""
    if g.unit != "swu":
        return 0
    words_per_row = g.ifm_w * (g.channels // swu_simd)
    write_block = g.ofm_w * g.k_w * g.k_h * (g.channels // swu_simd)
    read_block = g.stride_h * words_per_row
    return g.batch * (words_per_row * g.k_h + g.ofm_h * max(write_block, read_block))


def swu_rtl_cycles(
    ifm_h: int,
    ifm_w: int,
    channels: int,
    k_h: int,
    k_w: int,
    stride_h: int,
    stride_w: int,
    ofm_h: int,
    ofm_w: int,
    simd: int,
    parallel: bool = False,
    depthwise: bool = False,
) -> int:
    """``ConvolutionInputGenerator_rtl.get_exp_cycles`` for one image (dilation 1)."""
    cf = channels // simd
    if parallel or (k_h == 1 and k_w == 1):
        return ifm_h * ifm_w * cf + 2
    if ifm_h == 1 or ifm_w == 1:
        # FINN normalizes a 1D window to run along the width.
        if ifm_w == 1:
            ifm_w, ofm_w, k_w, stride_w = ifm_h, ofm_h, k_h, stride_h
        if depthwise:
            out = ofm_w * k_w * cf + (cf - 1) * k_w
            inp = ifm_w * cf + cf * (k_w - 1) * (stride_w - 1)
            return max(out, inp) + 2
        return ofm_w * k_w * cf + 2
    fill = ((k_h - 1) * ifm_w + k_w) * cf
    block = max(ofm_w * k_w * k_h * cf, stride_w * ifm_w * cf)
    if depthwise:
        block += ofm_w * (stride_w - 1) * (cf - 1)
    cycles = fill + ofm_h * block
    if depthwise:
        cycles += (stride_h - 1) * ifm_w * cf
    return cycles


def swu_cycles_rtl(g: Geometry, swu_simd: int, parallel: bool) -> int:
    """The RTL sliding window's cycles per frame for a layer; 0 where it has none."""
    if g.unit != "swu":
        return 0
    one = swu_rtl_cycles(g.ifm_h, g.ifm_w, g.channels, g.k_h, g.k_w, g.stride_h, g.stride_w, g.ofm_h, g.ofm_w, swu_simd, parallel)
    return g.batch * one


def ds_cycles(g: Geometry, swu_simd: int) -> int:
    """DownSampler cycles per frame (1x1 kernels with stride > 1); 0 otherwise."""
    if g.unit != "ds":
        return 0
    return g.batch * g.ifm_h * g.ifm_w * (g.channels // swu_simd)


def layer_cycles(g: Geometry, pe: int, simd: int, swu_simd: int) -> tuple[int, int, int]:
    """(mvau, swu, ds) cycles per frame."""
    return mvau_cycles(g, pe, simd), swu_cycles(g, swu_simd), ds_cycles(g, swu_simd)
