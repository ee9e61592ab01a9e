"""`workbook run`, `report` and `sweep` under a hostile user and a failing machine.

Nothing the user did not ask for is written or overwritten, nothing already written
is lost, every failure is one line with a documented exit code, and Ctrl-C leaves a
finished manifest and no temp files. Disk faults are injected by patching
``qatlab.atomic``'s writers (no root, no tmpfs needed). Tests that start Ray or a
notebook kernel are marked slow.
"""

from __future__ import annotations

import errno
import io
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from qatlab import atomic
from workbook.cli import main
from workbook.errors import CommandError
from workbook.report import INDEX_MARKER, build_index, may_write_index
from workbook.results import ResultStore
from workbook.spec import spec_from_dict
from workbook.sweep import cluster
from workbook.sweep.driver import _Driver, attempt_in_log, check_foreign, infra_attempts_text
from workbook.sweep.flight import TRIAL, Job
from workbook.sweep.plan import plan

REPO = Path(__file__).resolve().parents[2]
TINY_TRAIN = {"epochs": 1, "batch_size": 64, "calib_batches": 2, "limit_train": 300}


def one_line_error(err: str) -> str:
    lines = [ln for ln in err.strip().splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("workbook: error: "), err
    assert "Traceback" not in err
    return lines[0]


def tiny_spec(seeds=(0, 1, 2), name="a"):
    return spec_from_dict({"name": name, "dataset": "digits", "train": TINY_TRAIN, "grid": {"method": ["ptq"], "seed": list(seeds)}})


def spec_file(d: Path, seeds, name: str) -> Path:
    p = d / f"{name}.yaml"
    p.write_text(f"name: {name}\ndataset: digits\ntrain: {json.dumps(TINY_TRAIN)}\ngrid: {{method: [ptq], seed: {list(seeds)}}}\n"
                 "resources: {num_cpus: 1}\nsave_models: false\n")  # fmt: skip
    return p


def fill_store(out: Path, spec) -> ResultStore:
    """A sweep folder as a finished sweep of ``spec`` leaves it (records, table, spec.yaml, sweep.json)."""
    store = ResultStore(out)
    for t in spec.trials:
        store.save({**dict(t.config), "trial_id": t.trial_id, "status": "ok", "test_acc": 0.9}, log="log\n", artifacts={"model.pt": b"m"})
    store.rebuild_parquet([t.trial_id for t in spec.trials])
    (out / "spec.yaml").write_text(f"name: {spec.name}\n")
    (out / "sweep.json").write_text(json.dumps({"name": spec.name}))
    return store


def snapshot(d: Path) -> dict[str, bytes]:
    return {str(p.relative_to(d)): p.read_bytes() for p in sorted(d.rglob("*")) if p.is_file()}


def leftovers(d: Path) -> list[str]:
    return [str(p) for p in d.rglob("*") if p.name.endswith((".tmp", ".running")) or p.name.startswith((".staging-", ".write-test-"))]


def enospc(match: str):
    """A qatlab.atomic.write_bytes that fails with ENOSPC for file names containing ``match``."""
    real = atomic.write_bytes

    def write_bytes(path, data, *, mkdir=True):
        if match in Path(path).name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))
        return real(path, data, mkdir=mkdir)

    return write_bytes


# ---- 1. writing where the user did not ask ---------------------------------------------------


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path, capsys):
    (tmp_path / "index.html").write_text("<html>someone's own page</html>")
    d = tmp_path / "photos"
    d.mkdir()
    (d / "cat.jpg").write_bytes(b"x")
    before = snapshot(tmp_path)
    assert main(["report", str(d)]) == 2
    assert "not a run folder" in one_line_error(capsys.readouterr().err)
    assert snapshot(tmp_path) == before  # no run.json, the index untouched


def test_report_leaves_a_live_run_alone(tmp_path, capsys):
    run = tmp_path / "run1"
    _fake_run(run, notebooks=("kernels",))
    (run / "sweep").mkdir()
    (run / "sweep" / ".sweep.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    before = snapshot(tmp_path)
    assert main(["report", str(run), "--root", str(tmp_path)]) == 2
    assert "still writing" in one_line_error(capsys.readouterr().err)
    assert snapshot(tmp_path) == before


def test_report_root_that_does_not_exist_is_refused(tmp_path, capsys):
    assert main(["report", "--root", str(tmp_path / "typo")]) == 2
    assert "no such folder" in one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "typo").exists()


def test_index_is_written_only_in_the_root_or_over_our_own(tmp_path):
    root, other = tmp_path / "reports", tmp_path / "elsewhere"
    root.mkdir()
    other.mkdir()
    assert may_write_index(root, root) and not may_write_index(other, root)
    (other / "index.html").write_text("<html><head><title>my site</title></head></html>")
    assert not may_write_index(other, root)
    (root / "index.html").write_text("<html>a hand-written page in the reports folder</html>")
    assert not may_write_index(root, root)  # not ours, even in the root
    build_index(other / "runs")
    ours = other / "runs"
    assert INDEX_MARKER in (ours / "index.html").read_text() and may_write_index(ours, root)
    legacy = tmp_path / "old"
    legacy.mkdir()
    (legacy / "index.html").write_text('<html lang="en"><head><meta charset="utf-8"><title>qatlab reports</title>')
    assert may_write_index(legacy, root)


def _fake_run(d: Path, notebooks=("quantizers", "kernels")) -> None:
    """A run folder with executed notebooks (tiny, never run: rendering needs none of their outputs)."""
    import nbformat

    d.mkdir(parents=True)
    entries = []
    for name in notebooks:
        nb = nbformat.v4.new_notebook()
        nb.cells = [nbformat.v4.new_markdown_cell(f"# {name}"), nbformat.v4.new_code_cell("1 + 1")]
        nbformat.write(nb, d / f"{name}.ipynb")
        entries.append({"name": name, "status": "ok", "html": str(d / f"{name}.html")})
    (d / "run.json").write_text(json.dumps({"run_id": d.name, "date": "2026-01-01T00:00:00", "spec": "s", "status": "ok",
                                            "notebooks": entries}))  # fmt: skip


def test_report_names_a_missing_notebook_and_does_not_link_it(tmp_path, capsys):
    run = tmp_path / "run1"
    _fake_run(run)
    (run / "kernels.ipynb").unlink()
    assert main(["report", str(run), "--root", str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "1 of 2 reports re-rendered" in out and "missing: kernels" in out
    m = json.loads((run / "run.json").read_text())
    nb = {n["name"]: n for n in m["notebooks"]}
    assert nb["kernels"]["status"] == "missing" and nb["kernels"]["html"] is None
    assert nb["quantizers"]["status"] == "ok" and (run / "quantizers.html").is_file()
    index = (tmp_path / "index.html").read_text()
    assert "quantizers.html" in index and "kernels.html" not in index  # no dead link
    # the notebook's HTML alone still there: kept, linked, but said
    _fake_run(tmp_path / "run2")
    assert main(["report", str(tmp_path / "run2"), "--root", str(tmp_path)]) == 0
    (tmp_path / "run2" / "kernels.ipynb").unlink()
    capsys.readouterr()
    assert main(["report", str(tmp_path / "run2"), "--root", str(tmp_path)]) == 1
    assert "kernels.ipynb is gone: its HTML is kept" in capsys.readouterr().out
    assert "run2/kernels.html" in (tmp_path / "index.html").read_text()


@pytest.mark.parametrize("damage", ["run.json", "results.parquet"])
def test_report_on_a_truncated_file_is_one_line_and_changes_nothing(tmp_path, capsys, damage):
    run = tmp_path / "run1"
    _fake_run(run, notebooks=())
    fill_store(run / "sweep", tiny_spec())
    target = run / damage if damage == "run.json" else run / "sweep" / damage
    target.write_bytes(target.read_bytes()[: len(target.read_bytes()) // 2])
    before = snapshot(tmp_path)
    assert main(["report", str(run), "--root", str(tmp_path)]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert damage in line
    assert snapshot(tmp_path) == before


def test_second_run_into_a_live_run_changes_nothing(tmp_path, capsys):
    out = tmp_path / "run"
    (out / "sweep").mkdir(parents=True)
    (out / "run.json").write_text(json.dumps({"run_id": "run", "status": "running"}))
    # the live run's lock: a process that lives (our parent), on this host
    (out / "sweep" / ".sweep.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    before = snapshot(out)
    assert main(["run", "--spec", "digits-smoke", "--out", str(out)]) == 2
    assert "another sweep" in one_line_error(capsys.readouterr().err)
    assert snapshot(out) == before


# ---- 2. another spec's results -----------------------------------------------------------------


def test_sweep_of_another_spec_is_refused_before_ray_starts(tmp_path, capsys):
    out = tmp_path / "out"
    fill_store(out, tiny_spec(seeds=range(10)))
    before = snapshot(out)
    spec = spec_file(tmp_path, [100, 101, 102], "b")
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert str(out) in line and "--force" in line and "10 trials" in line
    assert snapshot(out) == before and len(pd.read_parquet(out / "results.parquet")) == 10
    # the same refusal from `workbook run` (its sweep folder is OUT/sweep), run.json untouched
    run = tmp_path / "run"
    fill_store(run / "sweep", tiny_spec(seeds=range(4)))
    (run / "run.json").write_text('{"status": "ok"}')
    before = snapshot(run)
    assert main(["run", "--spec", str(spec), "--out", str(run)]) == 2
    assert "--force" in one_line_error(capsys.readouterr().err)
    assert snapshot(run) == before


def test_force_moves_another_specs_results_aside_whole(tmp_path):
    old = tiny_spec(seeds=range(10))
    out = tmp_path / "out"
    store = fill_store(out, old)
    before = snapshot(out)
    new = tiny_spec(seeds=[0, 100, 101], name="b")  # seed 0: the same trial in both specs
    said = io.StringIO()
    with pytest.raises(CommandError, match="--force"):
        check_foreign(new, store, replace=False)
    dest = check_foreign(new, store, replace=True, say=said.write)
    assert dest is not None and dest.parent == out and str(dest) in said.getvalue()
    moved = snapshot(dest)
    # every byte of the old folder is somewhere: moved aside, or kept for the trial both specs share
    kept = {k: v for k, v in snapshot(out).items() if not k.startswith(dest.name)}
    assert {**moved, **kept} == before
    assert set(store.existing_ids()) == {old.trials[0].trial_id}
    assert len(pd.read_parquet(dest / "results.parquet")) == 10
    assert check_foreign(new, store, replace=False) is None  # nothing foreign is left


def test_run_force_moves_the_old_manifest_and_pages_too(tmp_path):
    from workbook.main_job import set_aside_run

    run = tmp_path / "run"
    store = fill_store(run / "sweep", tiny_spec(seeds=range(3)))
    (run / "run.json").write_text('{"spec": "a"}')
    (run / "kernels.html").write_text("<html></html>")
    foreign = store.foreign_ids(t.trial_id for t in tiny_spec(seeds=[7]).trials)
    dest = set_aside_run(run, store, foreign)
    assert (dest / "run.json").read_text() == '{"spec": "a"}' and (dest / "kernels.html").is_file()
    assert len(list((dest / "sweep" / "trials").iterdir())) == 3 and not (run / "run.json").exists()


# ---- 3. resources and addresses ----------------------------------------------------------------


def test_shortfall_names_the_resource_and_the_figures():
    nodes = [{"CPU": 2.0, "memory": 8 * 2**30}, {"CPU": 1.0, "GPU": 1.0}]
    assert cluster.shortfall({"CPU": 1.0}, nodes) is None
    assert cluster.shortfall({"CPU": 1.0, "GPU": 1.0}, nodes) is None
    assert cluster.shortfall({}, []) is None
    why = cluster.shortfall({"CPU": 4.0, "GPU": 2.0}, nodes)
    assert "CPU=4 per trial, but the largest node has 2" in why and "GPU=2 per trial, but the largest node has 1" in why
    assert "no node has all of them" in cluster.shortfall({"CPU": 2.0, "GPU": 1.0}, nodes)  # each exists, never together
    assert cluster.shortfall({"CPU": 1.0}, []) == "this Ray has no alive node"
    assert "GiB" in cluster.shortfall({"memory": 16.0 * 2**30}, nodes)


def test_shortfall_agrees_with_a_plain_search():
    from hypothesis import given
    from hypothesis import strategies as st

    amount = st.sampled_from([0.0, 0.5, 1.0, 2.0, 4.0])
    node = st.fixed_dictionaries({"CPU": amount, "GPU": amount})

    @given(st.lists(node, max_size=4), st.fixed_dictionaries({"CPU": amount, "GPU": amount}))
    def check(nodes, demand):
        demand = {k: v for k, v in demand.items() if v}
        possible = any(all(n[k] >= v for k, v in demand.items()) for n in nodes) or not demand
        assert (cluster.shortfall(demand, nodes) is None) == possible

    check()


def test_unsatisfiable_request_is_an_error_unless_an_autoscaler_may_help():
    said: list[str] = []
    with pytest.raises(cluster.ResourcesError) as e:
        cluster.check_demand({"CPU": 8.0}, said.append, nodes=[{"CPU": 2.0}], autoscaler=False)
    assert e.value.code == 2 and "CPU=8 per trial, but the largest node has 2" in str(e.value)
    cluster.check_demand({"GPU": 1.0}, said.append, nodes=[{"CPU": 2.0}], autoscaler=True)
    assert said and "autoscaler" in said[0] and "GPU=1" in said[0]
    assert "CPU 1 (free 0 of 2)" in cluster.waiting_for({"CPU": 1.0}, {"CPU": 0.0}, {"CPU": 2.0})


def test_busy_cluster_says_what_queued_trials_wait_for(tmp_path, monkeypatch):
    import ray

    spec = tiny_spec(seeds=[0])
    d, stream = _driver(spec, ResultStore(tmp_path))
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 0.0})
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    now = time.time()
    d.flight.add("ref", TRIAL, "k", spec.trials[0].trial_id, now - 45, runnable=True)
    d._note_waiting({"CPU": 1.0}, now)
    assert "waiting: 1 trials queued for CPU 1 (free 0 of 2); 0 running" in stream.getvalue()
    d._note_waiting({"CPU": 1.0}, now + 10)  # not again within the minute
    assert stream.getvalue().count("waiting:") == 1
    d._note_waiting({"CPU": 1.0}, now + 120)  # the same wait: not every minute
    assert stream.getvalue().count("waiting:") == 1
    d._note_waiting({"CPU": 1.0}, now + 700)  # ... but as a heartbeat every ten
    assert stream.getvalue().count("waiting:") == 2
    d.flight.add("ref2", TRIAL, "k2", spec.trials[0].trial_id + "x", now - 45, runnable=True)
    d._note_waiting({"CPU": 1.0}, now + 770)  # a change is said at once
    assert "waiting: 2 trials queued" in stream.getvalue()
    monkeypatch.setattr(ray, "available_resources", lambda: {"CPU": 2.0})
    d._note_waiting({"CPU": 1.0}, now + 2000)  # a slot is free: nothing to say
    assert stream.getvalue().count("waiting:") == 3


def test_address_where_nothing_listens_fails_fast(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    t0 = time.time()
    assert main(["sweep", "digits-smoke", "--out", str(tmp_path / "o"), "--address", "127.0.0.1:1"]) == 2
    assert time.time() - t0 < 30
    line = one_line_error(capsys.readouterr().err)
    assert "127.0.0.1:1" in line and "--address" in line
    monkeypatch.setenv("RAY_ADDRESS", "ray://127.0.0.1:1")
    assert main(["sweep", "digits-smoke", "--out", str(tmp_path / "o")]) == 2
    assert "$RAY_ADDRESS" in one_line_error(capsys.readouterr().err)


# ---- 4. Ctrl-C ------------------------------------------------------------------------------------


def test_ctrl_c_while_ray_starts_finalises_the_manifest(tmp_path, capsys, monkeypatch):
    import workbook.sweep.cli

    def interrupted(address):
        raise KeyboardInterrupt

    monkeypatch.setattr(workbook.sweep.cli, "connect", interrupted)  # what ray_session starts Ray with
    out = tmp_path / "run"
    assert main(["run", "--spec", "digits-smoke", "--out", str(out)]) == 130
    m = json.loads((out / "run.json").read_text())
    assert m["status"] == "interrupted" and m["stopped_in"] == "sweep"
    assert not (out / "sweep" / ".sweep.lock").exists() and not leftovers(tmp_path)
    assert not list(out.glob("*.ipynb"))


# ---- 5. tracebacks --------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["[1, 2", "{a: 1", "'open", "a: b: c", "@x"])
def test_p_value_that_is_not_yaml_is_one_line(tmp_path, capsys, value):
    assert main(["run", "--spec", "digits-smoke", "--out", str(tmp_path / "o"), "-p", f"epochs={value}"]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "-p epochs" in line and "not a YAML value" in line
    assert not (tmp_path / "o").exists()


@pytest.mark.parametrize("command", ["run", "sweep"])
def test_out_that_is_a_file_or_under_one_is_one_line(tmp_path, capsys, command):
    f = tmp_path / "file"
    f.write_text("x")
    for out in (f, f / "sub"):
        args = ["run", "--spec", "digits-smoke", "--out", str(out)] if command == "run" else ["sweep", "digits-smoke", "--out", str(out)]
        assert main(args) == 2
        assert "is a file, not a folder" in one_line_error(capsys.readouterr().err)
    assert f.read_text() == "x"


def test_out_on_a_read_only_disk_is_one_line(tmp_path, capsys, monkeypatch):
    import tempfile

    def read_only(*a, **k):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS))

    monkeypatch.setattr(tempfile, "mkstemp", read_only)
    assert main(["sweep", "digits-smoke", "--out", str(tmp_path / "o")]) == 2
    line = one_line_error(capsys.readouterr().err)
    assert "cannot write in" in line and "Read-only file system" in line


def test_out_in_missing_parent_folders_is_created(tmp_path):
    from workbook.sweep.cli import ensure_out_dir

    out = tmp_path / "a" / "b" / "c"
    ensure_out_dir(out)
    assert out.is_dir() and not list(out.iterdir())


# ---- 6. a full or read-only disk mid-sweep -----------------------------------------------------


def test_save_that_fails_leaves_the_trial_folder_as_it_was(tmp_path, monkeypatch):
    spec = tiny_spec(seeds=[0])
    (t,) = spec.trials
    store = ResultStore(tmp_path)
    store.save({"trial_id": t.trial_id, "status": "failed", "error": "first try"}, log="old log\n", artifacts={"intmodel.pt": b"old"})
    before = snapshot(tmp_path)
    monkeypatch.setattr(atomic, "write_bytes", enospc("intmodel.pt"))
    with pytest.raises(OSError):
        store.save({"trial_id": t.trial_id, "status": "ok"}, log="new\n", artifacts={"model.pt": b"new", "intmodel.pt": b"new"})
    assert snapshot(tmp_path) == before and not leftovers(tmp_path)


def _driver(spec, store: ResultStore) -> tuple[_Driver, io.StringIO]:
    stream = io.StringIO()
    d = _Driver(spec, store, "resume", None, False, stream, False)
    for t in spec.trials:
        d.key[t.trial_id] = "k"
        d.left["k"] = d.left.get("k", 0) + 1
    return d, stream


def _ok_record(t) -> dict:
    return {**dict(t.config), "trial_id": t.trial_id, "status": "ok", "test_acc": 0.9, "attempts": 1}


def test_disk_full_mid_sweep_fails_the_trial_with_the_reason_and_the_rerun_completes_it(tmp_path, monkeypatch):
    spec = tiny_spec(seeds=[0, 1])
    a, b = spec.trials
    store = ResultStore(tmp_path)
    d, stream = _driver(spec, store)
    d._finish(a, _ok_record(a), log="a\n", artifacts={"intmodel.pt": b"A"})
    with monkeypatch.context() as mp:
        mp.setattr(atomic, "write_bytes", enospc("intmodel.pt"))
        d._finish(b, _ok_record(b), log="b\n", artifacts={"intmodel.pt": b"B"})  # no exception escapes
    rec = store.load(b.trial_id)
    assert rec["status"] == "failed" and rec["failure"] == "disk" and "No space left on device" in rec["error"]
    assert not (store.trial_dir(b.trial_id) / "intmodel.pt").exists()  # no checkpoint without its record
    assert store.load(a.trial_id)["status"] == "ok" and (store.trial_dir(a.trial_id) / "intmodel.pt").read_bytes() == b"A"
    assert d.n_ok == 1 and d.n_failed == 1 and "No space left" in stream.getvalue()
    assert [t.trial_id for t in plan(spec, store, "resume")[0]] == [b.trial_id]  # the rerun runs it
    d2, _ = _driver(spec, store)
    d2._finish(b, _ok_record(b), log="b\n", artifacts={"intmodel.pt": b"B"})
    assert store.load(b.trial_id)["status"] == "ok" and (store.trial_dir(b.trial_id) / "intmodel.pt").read_bytes() == b"B"
    assert not leftovers(tmp_path)


def test_read_only_disk_mid_sweep_keeps_what_was_written_and_says_what_was_not(tmp_path, monkeypatch, capsys):
    from workbook.sweep.summary import SweepSummary, print_summary

    spec = tiny_spec(seeds=[0, 1])
    a, b = spec.trials
    store = ResultStore(tmp_path)
    d, _ = _driver(spec, store)
    d._finish(a, _ok_record(a), log="a\n", artifacts={})
    store.rebuild_parquet([t.trial_id for t in spec.trials])
    before = snapshot(tmp_path)

    def read_only(path, data, *, mkdir=True):
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))

    monkeypatch.setattr(atomic, "write_bytes", read_only)
    d._finish(b, _ok_record(b), log="b\n", artifacts={"intmodel.pt": b"B"})
    d._guard("results.parquet", lambda: store.rebuild_parquet([t.trial_id for t in spec.trials]))
    assert snapshot(tmp_path) == before  # nothing lost, nothing half-written
    assert b.trial_id in d.unsaved and "Read-only file system" in d.unsaved[b.trial_id]
    s = SweepSummary(out=tmp_path, total=2, unsaved=dict(d.unsaved), write_errors=list(d.write_errors))
    s.count(spec, store)
    assert s.exit_code == 1 and s.missing == 1 and len(s.write_errors) == 1
    print_summary(spec, store, s)
    assert f"NOT SAVED [{b.trial_id}]" in capsys.readouterr().out
    assert [t.trial_id for t in plan(spec, store, "resume")[0]] == [b.trial_id]


def test_a_disk_failure_never_replaces_an_ok_result(tmp_path, monkeypatch):
    spec = tiny_spec(seeds=[0])
    (t,) = spec.trials
    store = ResultStore(tmp_path)
    d, _ = _driver(spec, store)
    d._finish(t, _ok_record(t), log="x\n", artifacts={"intmodel.pt": b"good"})
    monkeypatch.setattr(atomic, "write_bytes", enospc("intmodel.pt"))
    d.left["k"] = 1
    d._finish(t, _ok_record(t), log="y\n", artifacts={"intmodel.pt": b"newer"})  # --force rerun, disk full
    assert store.load(t.trial_id)["status"] == "ok" and (store.trial_dir(t.trial_id) / "intmodel.pt").read_bytes() == b"good"
    assert t.trial_id in d.unsaved


# ---- 7. retries: the message and the record give the same count --------------------------------


def test_infra_failure_count_matches_the_record(tmp_path, monkeypatch):
    import ray

    spec = tiny_spec(seeds=[0, 1, 2])
    a, b, c = spec.trials
    store = ResultStore(tmp_path)
    d, _ = _driver(spec, store)

    def dead(ref, *a, **k):
        raise ray.exceptions.WorkerCrashedError()

    monkeypatch.setattr(ray, "get", dead)
    # a: its worker shared our node and started twice; b: never seen; c: waited for its FP32 source
    live = d._live_log(a.trial_id)
    live.parent.mkdir(parents=True)
    live.write_text(f"2026-01-01 trial {a.trial_id}: x (sweep a, grid), attempt 2\nnode ...\n")
    for t, runnable, want in ((a, 1.0, 2), (b, 1.0, None), (c, None, 0)):
        d._collect(object(), Job(TRIAL, "k", t.trial_id, 0.0, runnable, 0, False))
        rec = store.load(t.trial_id)
        assert rec["failure"] == "infra" and rec["attempts"] == want
        assert infra_attempts_text(want, 3) in rec["error"]
    assert "after 2 attempts" in store.load(a.trial_id)["error"] and "retries" in store.load(a.trial_id)["error"]
    assert "unknown" in store.load(b.trial_id)["error"] and "before the trial started" in store.load(c.trial_id)["error"]
    assert not live.exists()
    assert attempt_in_log(tmp_path / "nope") is None


# ---- slow: Ray, notebooks, signals ----------------------------------------------------------------


def _env(tmp: Path, short_tmp: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    # Ray's unix sockets live under TMPDIR: a path of pytest's length is too long for them.
    env.update(QATLAB_CACHE=str(tmp / "cache"), RAY_USAGE_STATS_ENABLED="0", TMPDIR=str(short_tmp),
               RAY_agent_register_timeout_ms="120000", RAY_worker_register_timeout_seconds="120")  # fmt: skip
    return env


def _wait_for(pred, proc: subprocess.Popen, timeout_s: float) -> bool:
    deadline = time.time() + timeout_s
    while time.time() < deadline:
        if pred():
            return True
        if proc.poll() is not None:
            return False
        time.sleep(0.2)
    return False


def _sigint_default() -> None:
    """In the child before exec: Ctrl-C back to its default, which Python then turns into
    KeyboardInterrupt. A shell that starts the suite in the background hands it SIGINT
    ignored, and that disposition would pass on to the run under test."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def _interrupt(proc: subprocess.Popen, log: Path) -> int:
    os.kill(proc.pid, signal.SIGINT)
    try:
        return proc.wait(timeout=90)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        raise AssertionError(f"no exit 90 s after SIGINT:\n{log.read_text()[-3000:]}") from None


def _survivors(marker: str, grace_s: float = 20.0) -> list[str]:
    """Processes (Ray's, a notebook kernel) still alive with our marker in their environment."""
    import psutil

    deadline = time.time() + grace_s
    while True:
        alive = []
        for p in psutil.process_iter(["pid", "name", "status"]):
            try:
                if p.info["status"] != psutil.STATUS_ZOMBIE and p.environ().get("QATLAB_TEST_GO") == marker:
                    alive.append(f"{p.pid} {p.info['name']}")
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                continue
        if not alive or time.time() > deadline:
            return alive
        time.sleep(1)


def _sleepy_notebooks(d: Path) -> Path:
    """Stand-ins for the four notebooks: each declares run_dir; the first sleeps until a file appears."""
    import nbformat

    from workbook.notebooks import NOTEBOOKS

    d.mkdir()
    for i, name in enumerate(NOTEBOOKS):
        nb = nbformat.v4.new_notebook()
        params = nbformat.v4.new_code_cell("run_dir = ''")
        params.metadata["tags"] = ["parameters"]
        body = "import os, time\nwhile not os.path.exists(os.environ['QATLAB_TEST_GO']):\n    time.sleep(0.2)" if i == 0 else "x = 1"
        nb.cells = [params, nbformat.v4.new_code_cell(body)]
        nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
        nbformat.write(nb, d / f"{name}.ipynb")
    return d


@pytest.mark.slow
def test_ctrl_c_in_run_during_sweep_and_notebooks_then_the_rerun_resumes(tmp_path):
    """SIGINT to `workbook run`: during the sweep, then (rerun) during a notebook; a third run finishes."""
    import shutil
    import tempfile

    tmp = Path(os.path.realpath(tmp_path))
    short_tmp = Path(tempfile.mkdtemp(prefix="qfr", dir="/tmp"))
    try:
        _ctrl_c_scenario(tmp, _env(tmp, short_tmp))
    finally:
        shutil.rmtree(short_tmp, ignore_errors=True)


def _ctrl_c_scenario(tmp: Path, env: dict[str, str]) -> None:
    env["QATLAB_NOTEBOOKS"] = str(_sleepy_notebooks(tmp / "nbs"))
    env["QATLAB_TEST_GO"] = str(tmp / "go")
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))  # for tests.usercode
    out = tmp / "reports" / "run1"
    # Trials after the first wait for sweep_go: run 1's Ctrl-C lands mid-sweep however
    # fast the trials are (four 0.3 s trials can all end before the signal arrives).
    gate = {"gate": str(tmp / "sweep_go"), "trials": str(out / "sweep" / "trials")}
    spec = tmp / "sig.yaml"
    spec.write_text(f"name: sig\ndataset: tests.usercode.loaders:load_gated\n"
                    f"train: {json.dumps({**TINY_TRAIN, 'loader_args': gate})}\ngrid: {{method: [ptq], seed: [0, 1, 2, 3]}}\n"
                    "resources: {num_cpus: 1}\nsave_models: false\n")  # fmt: skip
    cmd = [sys.executable, "-m", "workbook.cli", "run", "--spec", str(spec), "--out", str(out), "--max-concurrent", "1"]

    def start(n: int) -> tuple[subprocess.Popen, Path]:
        log = tmp / f"run{n}.log"
        with open(log, "w") as f:
            proc = subprocess.Popen(
                cmd, env=env, cwd=tmp, stdout=f, stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=_sigint_default
            )
            return proc, log

    # 1: interrupted mid-sweep, once the first trial is recorded
    proc, log = start(1)
    trials = out / "sweep" / "trials"
    ok = _wait_for(lambda: trials.is_dir() and any(trials.glob("*/result.json")), proc, 240)
    assert ok, log.read_text()[-3000:]
    assert _interrupt(proc, log) == 130, log.read_text()[-3000:]
    m = json.loads((out / "run.json").read_text())
    assert m["status"] == "interrupted" and m["stopped_in"] == "sweep", m
    assert not list(out.glob("*.ipynb")) and not list(out.glob("*.html"))  # no notebook ran on partial results
    assert not leftovers(out) and not (out / "sweep" / ".sweep.lock").exists()
    assert not _survivors(env["QATLAB_TEST_GO"])  # Ray and its workers stopped
    done = {p.parent.name for p in trials.glob("*/result.json")}
    assert 1 <= len(done) < 4

    # 2: the rerun resumes the sweep, then is interrupted inside the first notebook
    (tmp / "sweep_go").write_text("")
    proc, log = start(2)
    nb_started = lambda: "[2/2] notebooks" in log.read_text()
    assert _wait_for(nb_started, proc, 300), log.read_text()[-3000:]
    time.sleep(3)  # inside the sleeping cell
    assert _interrupt(proc, log) == 130, log.read_text()[-3000:]
    m = json.loads((out / "run.json").read_text())
    assert m["status"] == "interrupted" and m["stopped_in"] == "notebooks", m
    assert m["sweep"]["ok"] == 4 and m["sweep"]["ran"] == 4 - len(done)
    assert not leftovers(out) and not list(out.glob(".*.ipynb.*")), list(out.iterdir())
    assert "Traceback" not in log.read_text()
    assert not _survivors(env["QATLAB_TEST_GO"])  # the notebook's kernel stopped too

    # 3: nothing left to train; the notebooks run to the end
    (tmp / "go").write_text("")
    proc, log = start(3)
    assert proc.wait(timeout=300) == 0, log.read_text()[-3000:]
    m = json.loads((out / "run.json").read_text())
    assert m["status"] == "ok" and m["sweep"]["ran"] == 0 and len(m["notebooks"]) == 4
    assert not (tmp / "reports" / "index.html").exists() or INDEX_MARKER in (tmp / "reports" / "index.html").read_text()
    assert (tmp / "reports" / "index.html").is_file()  # cwd's reports/ is the reports root


@pytest.fixture(scope="module")
def ray_small(tmp_path_factory):
    ray = pytest.importorskip("ray")
    mp = pytest.MonkeyPatch()
    tmp = tmp_path_factory.mktemp("ray")
    mp.setenv("QATLAB_CACHE", str(tmp / "cache"))
    mp.delenv("RAY_ADDRESS", raising=False)
    mp.setenv("RAY_agent_register_timeout_ms", "120000")
    mp.setenv("RAY_worker_register_timeout_seconds", "120")
    kw = dict(address="local", num_cpus=2, num_gpus=0, include_dashboard=False, object_store_memory=80 << 20,
              log_to_driver=False, logging_level="warning")  # fmt: skip
    for attempt in range(3):  # a loaded machine can miss Ray's fixed 30 s startup wait
        try:
            ray.init(**kw)
            break
        except Exception:
            ray.shutdown()
            if attempt == 2:
                raise
    try:
        yield ray
    finally:
        ray.shutdown()
        mp.undo()


@pytest.mark.slow
def test_request_no_node_can_satisfy_is_refused_at_once(ray_small, tmp_path, capsys):
    assert not cluster.autoscaler_present()  # a Ray started by hand: its monitor is read-only
    spec = tmp_path / "big.yaml"
    spec.write_text("name: big\ndataset: digits\ngrid: {method: [fp32]}\nresources: {num_cpus: 64}\n")
    out = tmp_path / "out"
    t0 = time.time()
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 2
    assert time.time() - t0 < 30
    line = one_line_error(capsys.readouterr().err)
    assert "CPU=64 per trial, but the largest node has 2" in line
    assert not (out / "spec.yaml").exists() and not (out / "sweep.json").exists()


@pytest.mark.slow
def test_disk_full_in_a_real_sweep_then_the_rerun_completes(ray_small, tmp_path, capsys, monkeypatch):
    spec = tmp_path / "d.yaml"
    spec.write_text(f"name: d\ndataset: digits\ntrain: {json.dumps(TINY_TRAIN)}\n"
                    "grid: {method: [ptq], seed: [0, 1]}\nresources: {num_cpus: 1}\n")  # fmt: skip
    out = tmp_path / "out"
    with monkeypatch.context() as mp:
        mp.setattr(atomic, "write_bytes", enospc("intmodel.pt"))
        assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 1
    text = capsys.readouterr()
    df = pd.read_parquet(out / "results.parquet")
    assert len(df) == 2 and (df.failure == "disk").all() and df.error.str.contains("No space left").all(), text
    assert not list(out.glob("trials/*/intmodel.pt")) and not leftovers(out)
    runs = json.loads((out / "sweep.json").read_text())["runs"]
    assert runs[-1]["finished_at"] and runs[-1]["failed"] == 2
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    df = pd.read_parquet(out / "results.parquet")
    assert (df.status == "ok").all() and len(list(out.glob("trials/*/intmodel.pt"))) == 2


def test_ctrl_c_before_the_kernel_has_a_process_still_stops_it(tmp_path, monkeypatch):
    """Ctrl-C while the notebook's worker is still getting ready (no kernel process to
    kill yet): the kernel it starts afterwards is killed too, and the interrupt goes
    up at once rather than after the worker's 60 s grace."""
    import threading

    from workbook import notebooks

    started: list[subprocess.Popen] = []

    class Provisioner:
        pgid = None

    def fake_papermill(src, dst, parameters, timeout_s, km, outcome, done):
        try:
            time.sleep(1.0)  # reading and parameterizing: no kernel yet
            p = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(120)"], start_new_session=True)
            started.append(p)
            km.provisioner.pgid = p.pid  # the kernel launched: what papermill waits on
            p.wait()  # a killed kernel ends the run of the notebook
            outcome["status"] = "failed"
        finally:
            done.set()

    class FakeKM:
        kernel_name = "python3"

        def __init__(self, **_):
            self.provisioner = Provisioner()

    monkeypatch.setattr(notebooks, "_papermill", fake_papermill)
    monkeypatch.setattr("jupyter_client.manager.AsyncKernelManager", FakeKM)
    monkeypatch.setattr(notebooks, "kernel_name", lambda: "python3")
    nbs = _sleepy_notebooks(tmp_path / "nbs")
    monkeypatch.setenv("QATLAB_NOTEBOOKS", str(nbs))
    # Python's own Ctrl-C handler, even where the suite was started with SIGINT ignored.
    old_handler = signal.signal(signal.SIGINT, signal.default_int_handler)
    threading.Timer(0.3, os.kill, (os.getpid(), signal.SIGINT)).start()
    t0 = time.time()
    try:
        with pytest.raises(KeyboardInterrupt):
            notebooks.execute(notebooks.NOTEBOOKS[0], tmp_path / "out", {})
        assert time.time() - t0 < 20
        assert started and started[0].wait(timeout=10) is not None  # the kernel was killed, not left running
    finally:
        signal.signal(signal.SIGINT, old_handler)
        for p in started:
            p.kill()
