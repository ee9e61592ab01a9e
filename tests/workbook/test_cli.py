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


COMMAND_MODULES = ["workbook.main_job", "workbook.sweep", "workbook.report", "workbook.bench", "workbook.sim_asic",
                   "workbook.sim_fpga", "workbook.export_onnx"]  # fmt: skip


@pytest.mark.parametrize("module", COMMAND_MODULES)
def test_command_modules_do_not_import_the_cli(module):
    # cli.py imports every command module; a command importing cli.py back is a cycle.
    import subprocess
    import sys

    code = f"import sys, {module}; print(sorted(m for m in sys.modules if m == 'workbook.cli'))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == "[]"


def test_cli_reexports_the_shared_names():
    import workbook.cli as cli
    from workbook.argtypes import int_at_least
    from workbook.errors import CommandError

    assert cli.CommandError is CommandError and cli.int_at_least is int_at_least


@pytest.mark.parametrize(("lo", "text", "ok"), [(1, "1", 1), (1, "7", 7), (0, "0", 0), (3, "3", 3)])
def test_int_at_least_accepts(lo, text, ok):
    from workbook.argtypes import int_at_least

    assert int_at_least(lo)(text) == ok


@pytest.mark.parametrize(("lo", "text", "msg"), [(1, "0", "positive integer, got 0"), (0, "-1", "non-negative integer, got -1"),
                                                 (3, "2", "integer >= 3, got 2"), (1, "x", "positive integer, got 'x'"),
                                                 (1, "1.5", "got '1.5'")])  # fmt: skip
def test_int_at_least_names_the_bad_value(lo, text, msg):
    import argparse

    from workbook.argtypes import int_at_least

    with pytest.raises(argparse.ArgumentTypeError, match=msg.replace("(", r"\(")):
        int_at_least(lo)(text)


def test_sweep_max_concurrent_rejects_zero(capsys):
    with pytest.raises(SystemExit) as e:
        main(["sweep", "digits-smoke", "--max-concurrent", "0", "--dry-run"])
    assert e.value.code == 2 and "expected a positive integer, got 0" in capsys.readouterr().err
