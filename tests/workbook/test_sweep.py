"""The Ray sweep runner: resume, failures, logical GPUs, a node dying mid-sweep, results.

Ray runs with 2 CPUs, a small object store and no dashboard. The two-node test starts
its own cluster (``ray start``) on dedicated ports in a private temp dir, and stops
only the processes it started, by pid. Trials are LeNet on digits, 1 epoch: seconds.
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from workbook.cli import main
from workbook.results import REQUIRED_COLUMNS, ResultStore, SweepLockedError, records_to_parquet_bytes, write_json_atomic
from workbook.spec import spec_from_dict
from workbook.sweep import execute_trial, plan

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
TRAIN = "train: {epochs: 1, qat_epochs: 1, batch_size: 64, calib_batches: 2}\n"
# A loaded 2-core machine can take longer than Ray's default 15 s to start a node's agents.
SLOW_MACHINE_ENV = {"RAY_agent_register_timeout_ms": "120000", "RAY_worker_register_timeout_seconds": "120"}


def write_spec(d: Path, text: str, name: str = "spec.yaml") -> Path:
    p = d / name
    p.write_text(text)
    return p


# ---- two nodes, one dies mid-sweep (its own cluster; runs before the in-process Ray) ----


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_tree(proc: subprocess.Popen) -> None:
    """SIGKILL a process we started and all its descendants (raylet, agents, workers)."""
    import psutil

    try:
        root = psutil.Process(proc.pid)
        procs = [root] + root.children(recursive=True)
    except psutil.NoSuchProcess:
        return
    for p in procs:
        try:
            p.kill()
        except psutil.NoSuchProcess:
            pass
    psutil.wait_procs(procs, timeout=10)


def _start_node(tmp: Path, name: str, env: dict, args: list[str]) -> subprocess.Popen:
    """`ray start --block ...`; retried once: a loaded machine can miss Ray's 30 s startup wait."""
    for attempt in range(2):
        log = tmp / f"{name}.{attempt}.out"
        common = [
            "--block", "--temp-dir", str(tmp / "ray"), "--object-store-memory", str(80 << 20), "--disable-usage-stats",
            "--include-log-monitor", "false", "--node-manager-port", str(_free_port()),
            "--object-manager-port", str(_free_port()), "--dashboard-agent-listen-port", str(_free_port()),
            "--dashboard-agent-grpc-port", str(_free_port()), "--metrics-export-port", str(_free_port()),
            "--runtime-env-agent-port", str(_free_port()),
        ]  # fmt: skip
        with open(log, "w") as out:
            proc = subprocess.Popen(
                [str(VENV_BIN / "ray"), "start", *common, *args], env=env, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        deadline = time.time() + 120
        while time.time() < deadline:
            time.sleep(0.5)
            if "Ray runtime started" in log.read_text():
                return proc
            if proc.poll() is not None:
                break
        _kill_tree(proc)
    raise RuntimeError(f"ray start ({name}) failed:\n{log.read_text()[-3000:]}")


@pytest.mark.slow
def test_two_nodes_one_dies_mid_sweep_every_trial_ok_once(tmp_path):
    import psutil

    # Short paths: Ray's unix sockets live under the temp dir.
    tmp = Path(tempfile.mkdtemp(prefix="qln", dir="/tmp"))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(SLOW_MACHINE_ENV)
    env.update(
        QATLAB_CACHE=str(tmp / "cache"),
        RAY_USAGE_STATS_ENABLED="0",
        # This cluster's own token: nothing else on the machine can join it, or it them.
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
    )
    port = _free_port()
    started: list[subprocess.Popen] = []
    driver = None
    try:
        # The head has one trial slot, the second node two: trials land on both.
        head = _start_node(tmp, "head", env, [
            "--head", "--port", str(port), "--include-dashboard", "false", "--ray-client-server-port", str(_free_port()),
            "--num-cpus", "1", "--num-gpus", "0", "--resources", json.dumps({"trial_slot": 1}),
        ])  # fmt: skip
        started.append(head)
        node2_tmp = tmp / "node2-tmp"  # the second node's trials keep their logs here while running
        node2_tmp.mkdir()
        node2 = _start_node(tmp, "node2", {**env, "TMPDIR": str(node2_tmp)}, [
            "--address", f"127.0.0.1:{port}", "--num-cpus", "2", "--num-gpus", "0",
            "--resources", json.dumps({"trial_slot": 2}),
        ])  # fmt: skip
        started.append(node2)

        spec = write_spec(tmp, "name: twonode\ndataset: digits\n" + TRAIN
                          + "grid: {method: [qat], bits: [8], seed: [0, 1, 2, 3]}\n"
                          "resources: {num_cpus: 0.5, custom: {trial_slot: 1}, max_retries: 3}\nsave_models: false\n")  # fmt: skip
        out = tmp / "out"
        with open(tmp / "driver.out", "w") as log:
            driver = subprocess.Popen(
                [sys.executable, "-m", "workbook.cli", "sweep", str(spec), "--out", str(out), "--address", f"127.0.0.1:{port}", "--no-progress"],
                env=env, stdout=log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True,
            )  # fmt: skip
        killed_trial = None
        deadline = time.time() + 300
        while driver.poll() is None and time.time() < deadline:
            time.sleep(0.3)
            if killed_trial is None:
                # A trial is running on node 2 once its worker has opened the trial's log.
                running = sorted(node2_tmp.glob("qatlab-trial-*.log"))
                if running:
                    killed_trial = running[0].name.split("-")[2]
                    time.sleep(1.0)
                    _kill_tree(node2)  # node 2 dies mid-trial
        if driver.poll() is None:
            driver.kill()
        driver.wait(timeout=30)
        text = (tmp / "driver.out").read_text()
        assert killed_trial is not None, f"no trial ever ran on the second node:\n{text[-3000:]}"
        assert driver.returncode == 0, text[-3000:]
        df = pd.read_parquet(out / "results.parquet")
        assert len(df) == 4 and df.trial_id.is_unique and (df.status == "ok").all(), df[["trial_id", "status", "error"]]
        victim = df.set_index("trial_id").loc[killed_trial]
        assert victim.attempts >= 2, (text[-3000:], df[["trial_id", "attempts", "node_id", "worker_pid", "started_at"]])  # run again after the node died
        assert not psutil.pid_exists(node2.pid) or psutil.Process(node2.pid).status() == psutil.STATUS_ZOMBIE
    finally:
        if driver is not None and driver.poll() is None:
            _kill_tree(driver)
        for proc in reversed(started):
            _kill_tree(proc)
        shutil.rmtree(tmp, ignore_errors=True)


# ---- in-process Ray (logical GPUs declared) ----------------------------------------------


@pytest.fixture(scope="module")
def cache_dir():
    d = Path(tempfile.mkdtemp(prefix="qatlab-sweep-cache-"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_local(cache_dir):
    """A local Ray for this module: 2 CPUs and 4 logical GPUs that do not exist."""
    ray = pytest.importorskip("ray")
    mp = pytest.MonkeyPatch()
    # Set before ray.init: the raylet and its workers inherit this environment.
    mp.setenv("QATLAB_CACHE", str(cache_dir))
    mp.delenv("RAY_ADDRESS", raising=False)
    for k, v in SLOW_MACHINE_ENV.items():
        mp.setenv(k, v)
    tmp = tempfile.mkdtemp(prefix="qlr", dir="/tmp")
    # Workers' temp files (a trial killed on timeout leaves its own) go with this dir.
    os.makedirs(os.path.join(tmp, "t"))
    mp.setenv("TMPDIR", os.path.join(tmp, "t"))
    kw = dict(address="local", num_cpus=2, num_gpus=4, include_dashboard=False, object_store_memory=80 << 20,
              log_to_driver=False, _temp_dir=tmp, logging_level="warning")  # fmt: skip
    try:
        ray.init(**kw)
    except Exception:  # a loaded machine can miss Ray's startup wait once
        ray.shutdown()
        ray.init(**kw)
    try:
        yield ray
    finally:
        ray.shutdown()
        mp.undo()
        shutil.rmtree(tmp, ignore_errors=True)


def read_results(out: Path) -> pd.DataFrame:
    return pd.read_parquet(out / "results.parquet")


@pytest.mark.slow
def test_digits_sweep_resume_and_rerun_one(ray_local, tmp_path, capsys):
    spec = write_spec(tmp_path, "name: four\ndataset: digits\n" + TRAIN + "include:\n"
                      "  - {method: fp32}\n  - {method: ptq, bits: 8, ste: clipped}\n"
                      "  - {method: qat, bits: 8}\n  - {method: qat, bits: 4}\n"
                      "resources: {num_cpus: 1}\n")  # fmt: skip
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    captured = capsys.readouterr()
    assert "4 ok, 0 failed (ran 4 now, 0 were done)" in captured.out
    assert "trials: 100%" in captured.err and "ok=" in captured.err and "running=" in captured.err  # the progress bar
    df = read_results(out)
    assert len(df) == 4 and (df.status == "ok").all() and df.trial_id.is_unique
    assert list(df.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert set(df.method) == {"fp32", "ptq", "qat"} and (df.epochs == 1).all()
    assert df.test_acc.between(0.3, 1.0).all() and df.error.isna().all()
    for col in ("node_id", "node_ip", "worker_pid", "gpu_ids", "device", "attempts", "queue_s", "label", "sweep"):
        assert col in df.columns
    assert (df.device == "cpu").all() and df.gpu_ids.map(len).eq(0).all()
    # the fp32 trial pretrained; the others were held back and read its cached model
    assert df.set_index("method").loc["qat", "fp32_cached"].all()
    store = ResultStore(out)
    for tid in df.trial_id:
        assert store.result_path(tid).is_file()
        log = store.log_path(tid).read_text()
        assert tid in log and "status ok" in log
    assert (store.trial_dir(df.trial_id[1]) / "intmodel.pt").is_file()
    assert not list(out.rglob("*.tmp")) and not list(out.rglob("*.running"))
    manifest = json.loads((out / "sweep.json").read_text())
    assert [t["trial_id"] for t in manifest["trials"]] == list(df.trial_id)

    # again: nothing to do
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    assert "(ran 0 now, 4 were done)" in capsys.readouterr().out
    assert len(read_results(out)) == 4

    # one result deleted: exactly that trial runs
    gone = df.trial_id[2]
    before = {t: store.result_path(t).stat().st_mtime_ns for t in df.trial_id if t != gone}
    store.result_path(gone).unlink()
    assert len(read_results(out)) == 4  # the table still says what it said...
    assert main(["sweep", str(spec), "--out", str(out)]) == 0
    assert "(ran 1 now, 3 were done)" in capsys.readouterr().out
    df2 = read_results(out)
    assert len(df2) == 4 and (df2.status == "ok").all() and store.result_path(gone).is_file()
    assert {t: store.result_path(t).stat().st_mtime_ns for t in before} == before


def test_invalid_trial_fails_alone_and_exit_nonzero(ray_local, tmp_path, capsys):
    spec = write_spec(tmp_path, "name: onebad\ndataset: digits\n" + TRAIN
                      + "grid: {method: [ptq], bits: [8], seed: [0, 1]}\n"
                      "include: [{method: qat, w_bits: 1}]\nresources: {num_cpus: 1}\nsave_models: false\n")  # fmt: skip
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out)]) == 1
    text = capsys.readouterr()
    assert "2 ok, 1 failed" in text.out and "w_bits" in text.out
    df = read_results(out).set_index("method")
    bad = df.loc["qat"]
    assert bad.status == "failed" and "w_bits must be in 2..16, got 1" in bad.error and "include[0].w_bits" in bad.error
    assert bad.failure == "config" and bad.w_bits == 1
    assert (df.loc["ptq"].status == "ok").all()
    store = ResultStore(out)
    assert "w_bits" in store.log_path(bad.trial_id).read_text()

    # --rerun-failed runs the failed trial only; it fails again (exit 1)
    assert main(["sweep", str(spec), "--out", str(out), "--rerun-failed"]) == 1
    assert "(ran 1 now, 2 were done)" in capsys.readouterr().out
    # --force runs all of them again
    assert main(["sweep", str(spec), "--out", str(out), "--force", "--no-progress"]) == 1
    assert "(ran 3 now, 0 were done)" in capsys.readouterr().out
    assert len(read_results(out)) == 3


@pytest.mark.slow
def test_logical_gpus_get_distinct_ids_and_train_on_cpu(ray_local, tmp_path):
    import torch

    assert ray_local.cluster_resources().get("GPU") == 4 and not torch.cuda.is_available()
    spec = write_spec(tmp_path, "name: gpus\ndataset: digits\n" + TRAIN
                      + "grid: {method: [fp32], seed: [10, 11, 12, 13]}\n"
                      "resources: {num_cpus: 0.5, num_gpus: 1}\nsave_models: false\n")  # fmt: skip
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    df = read_results(out)
    assert len(df) == 4 and (df.status == "ok").all()
    ids = [tuple(g) for g in df.gpu_ids]
    assert all(len(g) == 1 for g in ids) and len(set(ids)) == 4  # all four at once, one GPU each
    assert set(sum(map(list, ids), [])) <= {"0", "1", "2", "3"}
    assert [(c,) for c in df.cuda_visible_devices] == ids  # what Ray exported to each trial
    assert (df.device == "cpu").all() and (~df.cuda_available).all()
    assert df.gpu_name.isna().all()


def test_max_concurrent_one_runs_trials_one_at_a_time(ray_local, tmp_path):
    spec = write_spec(tmp_path, "name: serial\ndataset: digits\n" + TRAIN
                      + "grid: {method: [fp32], seed: [0, 1]}\nresources: {num_cpus: 0.5}\nsave_models: false\n")  # fmt: skip
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--max-concurrent", "1", "--no-progress"]) == 0
    df = read_results(out).sort_values("started_at")
    first_end = pd.Timestamp(df.finished_at.iloc[0])
    assert pd.Timestamp(df.started_at.iloc[1]) >= first_end - pd.Timedelta(seconds=0.5)


def test_trial_over_timeout_is_cancelled_and_failed(ray_local, tmp_path, capsys):
    spec = write_spec(tmp_path, "name: slow\ndataset: digits\ntrain: {epochs: 200, batch_size: 16}\n"
                      "grid: {method: [fp32], seed: [30]}\nresources: {num_cpus: 1, timeout_s: 2}\n")  # fmt: skip
    out = tmp_path / "out"
    t0 = time.time()
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 1
    assert time.time() - t0 < 60
    rec = read_results(out).iloc[0]
    assert rec.status == "failed" and rec.failure == "timeout" and "timed out" in rec.error
    assert "1 failed" in capsys.readouterr().out


def test_locked_directory_is_refused(ray_local, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".sweep.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    assert main(["sweep", "digits-smoke", "--out", str(out)]) == 2
    assert "another sweep" in capsys.readouterr().err


# ---- pieces, without Ray ------------------------------------------------------------


def test_execute_trial_outside_ray_records_cpu_and_log(tmp_path, monkeypatch):
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "cache"))
    spec = spec_from_dict({"name": "x", "dataset": "digits", "train": {"epochs": 1, "batch_size": 64, "calib_batches": 2, "limit_train": 300},
                           "include": [{"method": "ptq", "bits": 8}]})  # fmt: skip
    t = spec.trials[0]
    res = execute_trial(dict(t.config), t.trial_id, {"sweep": "x", "label": t.label, "origin": t.origin, "num_cpus": 1, "save_models": True})
    rec = res["record"]
    assert rec["status"] == "ok" and rec["trial_id"] == t.trial_id and rec["device"] == "cpu" and rec["gpu_ids"] == []
    assert rec["failure"] is None and rec["label"] == t.label and rec["sweep"] == "x"
    assert set(res["artifacts"]) == {"model.pt", "intmodel.pt"}
    assert t.trial_id in res["log"] and "status ok" in res["log"]


def test_store_writes_atomically_and_plans_resume(tmp_path, monkeypatch):
    spec = spec_from_dict({"name": "p", "dataset": "digits", "grid": {"seed": [0, 1, 2]}})
    store = ResultStore(tmp_path)
    a, b, c = spec.trials
    store.save({"trial_id": a.trial_id, "status": "ok"}, log="log\n", artifacts={"model.pt": b"x"})
    store.save({"trial_id": b.trial_id, "status": "failed", "error": "boom"})
    assert [[t.trial_id for t in part] for part in plan(spec, store, "resume")] == [[b.trial_id, c.trial_id], [a.trial_id], []]
    assert [[t.trial_id for t in part] for part in plan(spec, store, "failed")] == [[b.trial_id], [a.trial_id], [c.trial_id]]
    assert len(plan(spec, store, "force")[0]) == 3
    # a damaged result counts as missing; a result for another trial id is not trusted
    store.result_path(a.trial_id).write_text("{not json")
    assert store.load(a.trial_id) is None
    # a write that fails half-way leaves the old file and no temp file
    target = tmp_path / "x.json"
    write_json_atomic(target, {"v": 1})

    def boom(*_a, **_k):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        write_json_atomic(target, {"v": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_parquet_keeps_types_and_required_columns(tmp_path):
    import io

    import pyarrow.parquet as pq

    recs = [
        {"trial_id": "a", "status": "ok", "w_bits": 8, "test_acc": 0.9, "limit_train": None, "gpu_ids": []},
        {"trial_id": "b", "status": "failed", "w_bits": 4, "test_acc": float("nan"), "limit_train": 100, "gpu_ids": ["1"], "error": "x"},
    ]
    t = pq.read_table(io.BytesIO(records_to_parquet_bytes(recs)))
    assert t.column_names[: len(REQUIRED_COLUMNS)] == list(REQUIRED_COLUMNS)
    assert str(t.schema.field("limit_train").type) == "int64" and str(t.schema.field("w_bits").type) == "int64"
    assert str(t.schema.field("test_acc").type) == "double" and t.column("test_acc").to_pylist() == [0.9, None]
    assert t.column("gpu_ids").to_pylist() == [[], ["1"]]
    assert str(t.schema.field("fp32_acc").type) == "double"  # absent from every record, still typed


def test_lock_taken_over_from_dead_process(tmp_path):
    store = ResultStore(tmp_path)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (tmp_path / ".sweep.lock").write_text(json.dumps({"pid": dead.pid, "host": socket.gethostname()}))
    with store.lock():
        with pytest.raises(SweepLockedError):
            with ResultStore(tmp_path).lock():
                pass
    assert not (tmp_path / ".sweep.lock").exists()
