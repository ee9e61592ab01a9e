import json

import pytest

from workbook.cli import main


def test_help_lists_commands(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    for cmd in ("run", "sweep", "report", "sim", "bench", "export"):
        assert cmd in out


def test_unknown_param_lists_valid_keys(capsys, tmp_path):
    assert main(["run", "--spec", "tiny", "--out", str(tmp_path), "-p", "wbits=4"]) == 2
    err = capsys.readouterr().err
    assert "unknown parameter" in err and "w_bits" in err


def test_unknown_spec(capsys):
    assert main(["run", "--spec", "nope"]) == 2
    assert "--spec 'nope'" in capsys.readouterr().err


def test_run_tiny_writes_results(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "cache"))
    rc = main(["run", "--spec", "tiny", "--out", str(tmp_path / "run"), "-p", "epochs=2"])
    assert rc == 0, capsys.readouterr()
    records = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["method"] for r in records] == ["fp32", "ptq", "qat", "qat"]
    assert all(r["status"] == "ok" and r["epochs"] == 2 for r in records)
    assert "test" in capsys.readouterr().out
