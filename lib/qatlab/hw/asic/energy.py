"""Energy per access: a small table with the source of every number, and node scaling.

Base numbers are 45 nm, 0.9 V, from M. Horowitz, "Computing's energy problem (and what
we can do about it)", IEEE ISSCC 2014, Digest of Technical Papers, pp. 10-14 (its
energy-per-operation table for integer arithmetic and memory accesses):

==========================  ===========  ==========================================
operation                   energy       note
==========================  ===========  ==========================================
8-bit integer add           0.03 pJ
32-bit integer add          0.1 pJ       the accumulator of every MAC (int32)
8-bit integer multiply      0.2 pJ
32-bit integer multiply     3.1 pJ       (3.1 / 0.2 = 15.5 ~ 16 = (32/8)^2: see below)
SRAM read, 8 KB, 64 bit     10 pJ
SRAM read, 32 KB, 64 bit    20 pJ
SRAM read, 1 MB, 64 bit     100 pJ
DRAM access, 64 bit         1.3-2.6 nJ   we use the midpoint, 1.95 nJ
==========================  ===========  ==========================================

Derived rules (ours, documented here because the paper gives points, not laws):

- **MAC by operand bits.** An array multiplier's energy follows its partial-product
  count, ``w_bits x a_bits``; Horowitz's 8-bit and 32-bit points agree (ratio 15.5 vs
  16). ``E_mult(w, a) = 0.2 pJ x w*a/64``; every MAC adds into a 32-bit accumulator:
  ``E_mac = E_mult + 0.1 pJ``.
- **SRAM by size.** Log-log interpolation between the three points (slope 0.5 from 8
  to 32 KB, 0.46 from 32 KB to 1 MB), extrapolated with the end slopes; a word of
  ``b`` bits costs ``b/64`` of a 64-bit access (wide SRAMs are read a row at a time;
  this is the usual per-bit normalisation).
- **Registers.** A systolic cell latches every operand it passes on. Eyeriss (Y.-H.
  Chen, J. Emer, V. Sze, "Eyeriss: a spatial architecture for energy-efficient
  dataflow for convolutional neural networks", ISCA 2016; its normalized energy
  costs: register file 1x, inter-PE 2x, global buffer 6x, DRAM 200x, where 1x is one
  MAC) puts a small register-file access at one MAC; we charge one 8-bit MAC (0.23 pJ at 45 nm, the multiplier plus an 8-bit add)
  per 8 bits latched.
- **DRAM** is charged per byte: 1.95 nJ / 8 = 244 pJ. It is not scaled with the logic
  node (interface and array energy dominate and do not follow the logic node).

**Node scaling.** Dynamic energy is ``C V^2``; under constant-field scaling (Dennard et
al., IEEE JSSC 1974) capacitance shrinks with the feature size. So every on-chip
energy is multiplied by ``(node_nm / 45) x (vdd / 0.9)^2``. This is a first-order
rule: it ignores leakage and wire-dominated effects below ~20 nm, so state the node
and voltage next to any figure computed with it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

BASE_NODE_NM = 45.0
BASE_VDD = 0.9

# Horowitz, ISSCC 2014 (45 nm, 0.9 V), pJ.
INT8_ADD_PJ = 0.03
INT32_ADD_PJ = 0.1
INT8_MULT_PJ = 0.2
INT32_MULT_PJ = 3.1
SRAM_64BIT_PJ = ((8 * 1024, 10.0), (32 * 1024, 20.0), (1024 * 1024, 100.0))  # (bytes, pJ per 64-bit read)
DRAM_64BIT_PJ = (1300.0 + 2600.0) / 2  # 1.3-2.6 nJ: midpoint


def node_factor(node_nm: float, vdd: float) -> float:
    """On-chip energy multiplier from 45 nm / 0.9 V to ``node_nm`` / ``vdd`` (C V^2, C ~ L)."""
    if node_nm <= 0 or vdd <= 0:
        raise ValueError(f"node_nm and vdd must be positive, got {node_nm}, {vdd}")
    return (node_nm / BASE_NODE_NM) * (vdd / BASE_VDD) ** 2


def mult_pj(w_bits: int, a_bits: int) -> float:
    """Integer multiply, scaled by the partial-product count (45 nm)."""
    return INT8_MULT_PJ * (w_bits * a_bits) / 64.0


def mac_pj(w_bits: int, a_bits: int) -> float:
    """One multiply-accumulate into an int32 accumulator (45 nm)."""
    return mult_pj(w_bits, a_bits) + INT32_ADD_PJ


def sram_pj_per_64bit(size_bytes: float) -> float:
    """64-bit SRAM read energy by capacity: log-log interpolation of Horowitz's points (45 nm)."""
    if size_bytes <= 0:
        raise ValueError(f"SRAM size must be positive, got {size_bytes}")
    pts = SRAM_64BIT_PJ
    if size_bytes <= pts[1][0]:
        (s0, e0), (s1, e1) = pts[0], pts[1]
    else:
        (s0, e0), (s1, e1) = pts[1], pts[2]
    slope = math.log(e1 / e0) / math.log(s1 / s0)
    return e0 * (size_bytes / s0) ** slope


@dataclass(frozen=True)
class EnergyTable:
    """Per-access energies (pJ) at one technology node, from the Horowitz 45 nm table."""

    node_nm: float = BASE_NODE_NM
    vdd: float = BASE_VDD

    @property
    def factor(self) -> float:
        return node_factor(self.node_nm, self.vdd)

    def mac(self, w_bits: int, a_bits: int) -> float:
        return mac_pj(w_bits, a_bits) * self.factor

    def register(self, bits: int) -> float:
        """Latching ``bits`` bits in a pipeline register (1 MAC per 8 bits, Eyeriss' ratio)."""
        return (INT8_MULT_PJ + INT8_ADD_PJ) * (bits / 8.0) * self.factor

    def sram(self, size_kb: float, bits: int = 8) -> float:
        """One ``bits``-wide access to an SRAM of ``size_kb`` kB."""
        return sram_pj_per_64bit(size_kb * 1024) * (bits / 64.0) * self.factor

    def dram_per_byte(self) -> float:
        return DRAM_64BIT_PJ / 8.0

    def as_dict(self) -> dict[str, float]:
        return {
            "node_nm": self.node_nm,
            "vdd": self.vdd,
            "factor": self.factor,
            "mac_8x8_pj": self.mac(8, 8),
            "register_8b_pj": self.register(8),
            "sram_64kb_8b_pj": self.sram(64),
            "dram_byte_pj": self.dram_per_byte(),
        }
