import pytest

from workbook.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "sweep", "report", "sim", "bench", "export"):
        assert cmd in out


@pytest.mark.parametrize("cmd", [["run"], ["sweep"], ["report"], ["sim", "asic"], ["sim", "fpga"], ["bench"], ["export", "onnx"]])
def test_every_command_has_help(cmd, capsys):
    with pytest.raises(SystemExit) as e:
        main([*cmd, "--help"])
    assert e.value.code == 0 and "usage:" in capsys.readouterr().out


def test_unknown_param_lists_valid_keys(capsys, tmp_path):
    assert main(["run", "--spec", "digits-smoke", "--out", str(tmp_path), "-p", "wbits=4"]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter" in err and "w_bits" in err and "fpga_device" in err
    assert not any(tmp_path.iterdir())  # nothing written


def test_unknown_spec_is_one_line(capsys, tmp_path):
    assert main(["run", "--spec", "nope", "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err.strip()
    assert "nope" in err and len(err.splitlines()) == 1
    assert not (tmp_path / "x").exists()
