"""Cycle counts per frame of FINN's streaming units (the "expected cycles" of its cost model).

* MVAU (FINN ``MVAU.get_exp_cycles``, src/finn/custom_op/fpgadataflow/
  matrixvectoractivation.py): ``(MH/PE) · (MW/SIMD) · output vectors``. Each cycle the
  PE x SIMD array takes SIMD inputs and PE rows of weights.
* SWU (FINN ``ConvolutionInputGenerator_hls.get_exp_cycles`` for the 2D non-depthwise
  finn-hlslib ``ConvolutionInputGenerator``): first ``ifm_w · k_h · C/SIMD`` cycles
  fill k_h input rows, then each output row takes ``max(write, read)`` cycles, with
  ``write = ofm_w · k_w · k_h · C/SIMD`` words out and ``read = stride · ifm_w · C/SIMD``
  words of the next rows in::

      cycles = ifm_w · k_h · C/SIMD + ofm_h · max(ofm_w · k_w · k_h · C/SIMD, stride · ifm_w · C/SIMD)

  FINN writes ``stride_w`` in the read term; the rows read per output row are
  ``stride_h`` of them, which we use (the two agree for the square strides SCALE-Sim
  topologies have). Dilation is 1.
* DownSampler (FINN ``DownSampler.get_exp_cycles``): ``C/SIMD · ifm_h · ifm_w``.

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


def ds_cycles(g: Geometry, swu_simd: int) -> int:
    """DownSampler cycles per frame (1x1 kernels with stride > 1); 0 otherwise."""
    if g.unit != "ds":
        return 0
    return g.batch * g.ifm_h * g.ifm_w * (g.channels // swu_simd)


def layer_cycles(g: Geometry, pe: int, simd: int, swu_simd: int) -> tuple[int, int, int]:
    """(mvau, swu, ds) cycles per frame."""
    return mvau_cycles(g, pe, simd), swu_cycles(g, swu_simd), ds_cycles(g, swu_simd)
