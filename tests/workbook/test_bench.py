import argparse
import json
import sys
from pathlib import Path

import pytest

from workbook import bench
from workbook.errors import CommandError

# A stand-in benchmark: records its argv, then exits with the status in its name.
SCRIPT = """
import json, sys
from pathlib import Path
here = Path(__file__)
with open(here.parent / "calls.jsonl", "a") as fh:
    fh.write(json.dumps([here.name, sys.argv[1:]]) + "\\n")
if "--json" in sys.argv:
    Path(sys.argv[sys.argv.index("--json") + 1]).write_text(json.dumps({{"script": here.name}}))
sys.exit({status})
"""


def _scripts(root: Path, **statuses: object) -> None:
    for name, status in statuses.items():
        (root / f"{name}.py").write_text(SCRIPT.format(status=repr(status)))


def _calls(root: Path) -> list[list[object]]:
    path = root / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_every_target_names_scripts_that_exist():
    for target, names in bench.SCRIPTS.items():
        assert names, target
        for name in names:
            assert (bench.BENCHMARKS_DIR / name).is_file(), (target, name)
    assert bench.JSON_SCRIPTS <= {n for names in bench.SCRIPTS.values() for n in names}


def test_runs_in_order_and_returns_the_first_failure(tmp_path):
    _scripts(tmp_path, a=0, b=3, c=5)
    argv = list(sys.argv)
    assert bench.run_scripts(("a.py", "b.py", "c.py"), None, root=tmp_path) == 3
    assert [c[0] for c in _calls(tmp_path)] == ["a.py", "b.py", "c.py"]  # a failure does not stop the rest
    assert sys.argv == argv


def test_exit_none_is_success_and_a_message_is_failure(tmp_path, capsys):
    _scripts(tmp_path, ok=None, msg="no GPU here")
    assert bench.run_scripts(("ok.py",), None, root=tmp_path) == 0
    assert bench.run_scripts(("msg.py",), None, root=tmp_path) == 1
    assert "no GPU here" in capsys.readouterr().err


def test_json_goes_only_to_scripts_that_take_it(tmp_path, monkeypatch):
    _scripts(tmp_path, takes=0, plain=0)
    monkeypatch.setattr(bench, "JSON_SCRIPTS", frozenset({"takes.py"}))
    out = str(tmp_path / "out.json")
    assert bench.run_scripts(("takes.py", "plain.py"), out, root=tmp_path) == 0
    assert _calls(tmp_path) == [["takes.py", ["--json", out]], ["plain.py", []]]
    with pytest.raises(CommandError, match="--json is not supported by plain.py"):
        bench.run_scripts(("plain.py",), "out.json", root=tmp_path)


def test_missing_script_is_named_before_anything_runs(tmp_path):
    _scripts(tmp_path, a=0)
    with pytest.raises(CommandError, match="gone.py"):
        bench.run_scripts(("a.py", "gone.py"), None, root=tmp_path)
    assert _calls(tmp_path) == []


def test_unknown_target():
    with pytest.raises(CommandError, match="unknown; expected one of fakequant"):
        bench.run(argparse.Namespace(target="nope", json=None))


def test_fakequant_target_runs_the_script(tmp_path, monkeypatch, capsys):
    # The real script, at a tiny size so that it takes milliseconds.
    run_script = bench._run_script
    monkeypatch.setattr(bench, "_run_script", lambda script, argv: run_script(script, [*argv, "--size", "8", "--repeats", "1"]))
    out = tmp_path / "fq.json"
    assert bench.run(argparse.Namespace(target="fakequant", json=str(out))) == 0
    lines = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert "machine" in lines[0] and len(lines) == 5
    data = json.loads(out.read_text())
    assert data["target"] == "fakequant" and len(data["rows"]) == 4
