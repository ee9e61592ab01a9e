from __future__ import annotations

import pytest

from qatlab.hw.fpga import DEVICES, UnknownDeviceError, get_device


def test_catalog_values_from_datasheets():
    z7, zcu, u250 = get_device("PYNQ-Z1"), get_device("ZCU104"), get_device("U250")
    assert (z7.lut, z7.dsp, z7.bram18, z7.uram, z7.dsp_block) == (53_200, 220, 280, 0, "DSP48E1")  # DS190
    assert (zcu.lut, zcu.dsp, zcu.bram18, zcu.uram, zcu.dsp_block) == (230_400, 1_728, 624, 96, "DSP48E2")  # DS891
    assert (u250.lut, u250.dsp, u250.bram18, u250.uram) == (1_728_000, 12_288, 5_376, 1_280)  # DS962
    for d in DEVICES.values():
        assert d.source and d.part and d.default_clock_mhz > 0


@pytest.mark.parametrize("alias, name", [("zcu104", "ZCU104"), ("xc7z020", "PYNQ-Z1"), ("Alveo-U250", "U250"), ("pynq", "PYNQ-Z1")])
def test_aliases(alias, name):
    assert get_device(alias).name == name


def test_unknown_device_lists_known_ones():
    with pytest.raises(UnknownDeviceError, match="ZCU104") as e:
        get_device("ZCU999")
    assert isinstance(e.value, ValueError)


def test_cli_names_match_catalog():
    from workbook.sim_fpga import DEVICE_NAMES

    assert tuple(DEVICES) == DEVICE_NAMES
