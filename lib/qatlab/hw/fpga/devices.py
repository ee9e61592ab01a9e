"""Device catalog: the resources each FPGA offers, from the vendors' data sheets.

Capacities are the whole device, as the data sheets list them; a platform shell
(Alveo's XDMA, a Zynq design's AXI interconnect) takes some of them, which is one
reason the folding search keeps below FINN's recommended utilization limits
(:data:`FINN_RES_LIMITS`) rather than at 100 %.

Sources
-------
* PYNQ-Z1 (Digilent) carries an XC7Z020-1CLG400C. Xilinx DS190, *Zynq-7000 SoC Data
  Sheet: Overview*, table "Zynq-7000 SoC Family": Z-7020 has 53,200 LUTs, 106,400
  flip-flops, 140 block RAMs of 36 Kb (4.9 Mb; each is two 18 Kb halves: 280
  BRAM18) and 220 DSP slices (DSP48E1); no UltraRAM.
* ZCU104 carries an XCZU7EV-2FFVC1156 (Xilinx UG1267, *ZCU104 Evaluation Board User
  Guide*). Xilinx DS891, *Zynq UltraScale+ MPSoC Data Sheet: Overview*: ZU7EV has
  230,400 CLB LUTs, 460,800 flip-flops, 312 block RAMs of 36 Kb (11.0 Mb: 624
  BRAM18), 96 UltraRAMs of 288 Kb (27.0 Mb) and 1,728 DSP slices (DSP48E2).
* Alveo U250 (XCU250-FIGD2104-2L-E). Xilinx DS962, *Alveo U250 Data Center
  Accelerator Card Data Sheet* (the same silicon as DS923's VU13P): 1,728K LUTs,
  3,456K registers, 2,688 block RAMs of 36 Kb (94.5 Mb: 5,376 BRAM18), 1,280
  UltraRAMs (360 Mb) and 12,288 DSP slices (DSP48E2).
* Ultra96-V2 (XCZU3EG) and ZCU102 (XCZU9EG), also DS891: ZU3EG 70,560 LUTs, 216
  BRAM36, 360 DSP; ZU9EG 274,080 LUTs, 912 BRAM36, 2,520 DSP; neither has UltraRAM.

Default clocks are this project's assumption (what FINN's example builds commonly
target), not a data-sheet figure: pass ``clock_mhz`` to override.
"""

from __future__ import annotations

from dataclasses import dataclass

from .errors import UnknownDeviceError

# FINN's recommended utilization limits for timing closure, per resource
# (src/finn/util/platforms.py, DEFAULT_RES_LIMITS: LUT 0.7, FF 0.5, BRAM_18K 0.8,
# URAM 0.8, DSP 0.8). We estimate no flip-flops, so FF has no entry.
FINN_RES_LIMITS: dict[str, float] = {"lut": 0.7, "bram18": 0.8, "uram": 0.8, "dsp": 0.8}

RESOURCES = ("lut", "dsp", "bram18", "uram")


@dataclass(frozen=True)
class Device:
    """One FPGA part and what it offers to a dataflow design."""

    name: str
    part: str
    lut: int
    ff: int
    dsp: int
    bram18: int  # 18 Kb block RAM halves (a 36 Kb BRAM counts as two)
    uram: int  # 288 Kb UltraRAM blocks
    dsp_block: str  # DSP48E1 (7-series) | DSP48E2 (UltraScale+) | DSP58 (Versal)
    default_clock_mhz: float
    source: str

    def capacity(self, resource: str) -> int:
        return int(getattr(self, resource))

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "part": self.part,
            "lut": self.lut,
            "ff": self.ff,
            "dsp": self.dsp,
            "bram18": self.bram18,
            "uram": self.uram,
            "dsp_block": self.dsp_block,
            "default_clock_mhz": self.default_clock_mhz,
            "source": self.source,
        }


DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        Device(
            "PYNQ-Z1", "xc7z020clg400-1", 53_200, 106_400, 220, 280, 0, "DSP48E1", 100.0, "Xilinx DS190 (Zynq-7000 overview), Z-7020 column"
        ),
        Device(
            "Ultra96-V2",
            "xczu3eg-sbva484-1-i",
            70_560,
            141_120,
            360,
            432,
            0,
            "DSP48E2",
            150.0,
            "Xilinx DS891 (Zynq UltraScale+ MPSoC overview), ZU3EG column",
        ),
        Device(
            "ZCU104",
            "xczu7ev-ffvc1156-2-e",
            230_400,
            460_800,
            1_728,
            624,
            96,
            "DSP48E2",
            200.0,
            "Xilinx DS891 (Zynq UltraScale+ MPSoC overview), ZU7EV column; board: UG1267",
        ),
        Device(
            "ZCU102",
            "xczu9eg-ffvb1156-2-e",
            274_080,
            548_160,
            2_520,
            1_824,
            0,
            "DSP48E2",
            200.0,
            "Xilinx DS891 (Zynq UltraScale+ MPSoC overview), ZU9EG column",
        ),
        Device(
            "U250",
            "xcu250-figd2104-2L-e",
            1_728_000,
            3_456_000,
            12_288,
            5_376,
            1_280,
            "DSP48E2",
            200.0,
            "Xilinx DS962 (Alveo U250 data sheet); VU13P column of DS923",
        ),
    )
}

_ALIASES = {
    "pynq-z1": "PYNQ-Z1",
    "pynqz1": "PYNQ-Z1",
    "pynq": "PYNQ-Z1",
    "xc7z020": "PYNQ-Z1",
    "z7020": "PYNQ-Z1",
    "ultra96": "Ultra96-V2",
    "ultra96-v2": "Ultra96-V2",
    "xczu3eg": "Ultra96-V2",
    "zcu104": "ZCU104",
    "xczu7ev": "ZCU104",
    "zcu102": "ZCU102",
    "xczu9eg": "ZCU102",
    "u250": "U250",
    "alveo-u250": "U250",
    "alveo u250": "U250",
    "xcu250": "U250",
}


def device_names() -> list[str]:
    return list(DEVICES)


def get_device(name: str | Device) -> Device:
    """A catalog device by name (case-insensitive; board or part names both work)."""
    if isinstance(name, Device):
        return name
    key = str(name).strip()
    if key in DEVICES:
        return DEVICES[key]
    canon = _ALIASES.get(key.lower())
    if canon is None:
        raise UnknownDeviceError(f"unknown device {name!r}; known devices: {', '.join(DEVICES)}")
    return DEVICES[canon]
