"""The Ray sweep runner: resume, failures, logical GPUs, a node dying mid-sweep, FP32
pretraining shared as a Ray dependency, results.

Ray runs with 2 CPUs, a small object store and no dashboard. The two-node test starts
its own cluster (``ray start``) on dedicated ports in a private temp dir, and stops
only the processes it started, by pid. Trials are LeNet on digits, 1 epoch: seconds.
Every test that starts Ray is marked slow; the pieces below them run without Ray.
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
from workbook.sweep.flight import FP32, TRIAL, Flight
from workbook.sweep.fp32 import Fp32PayloadError, install, pretrain

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
                          + "grid: {method: [qat], bits: [8, 4], seed: [0, 1]}\n"
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
        assert victim.attempts >= 2, (
            text[-3000:],
            df[["trial_id", "attempts", "node_id", "worker_pid", "started_at"]],
        )  # run again after the node died
        # two FP32 groups, each pretrained once by its own task: no trial pretrained, not even the one run again
        assert df.fp32_cached.all() and df.fp32_node_ip.notna().all(), df[["trial_id", "fp32_cached", "fp32_node_ip"]]
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
    assert "trials:" not in captured.err and "running=" not in captured.err  # no bar when the output is not a terminal
    df = read_results(out)
    assert len(df) == 4 and (df.status == "ok").all() and df.trial_id.is_unique
    assert list(df.columns[: len(REQUIRED_COLUMNS)]) == list(REQUIRED_COLUMNS)
    assert set(df.method) == {"fp32", "ptq", "qat"} and (df.epochs == 1).all()
    assert df.test_acc.between(0.3, 1.0).all() and df.error.isna().all()
    for col in ("node_id", "node_ip", "worker_pid", "gpu_ids", "device", "attempts", "queue_s", "label", "sweep"):
        assert col in df.columns
    assert (df.device == "cpu").all() and df.gpu_ids.map(len).eq(0).all()
    # the fp32 trial pretrained; the others took its FP32 model as a Ray dependency
    assert df.set_index("method").loc["qat", "fp32_cached"].all()
    assert not df.set_index("method").loc["fp32", "fp32_cached"]
    fp32_id = df.set_index("method").loc["fp32", "trial_id"]
    for tid in df[df.method != "fp32"].trial_id:
        assert f"from trial fp32 seed=0 [{fp32_id}]" in ResultStore(out).log_path(tid).read_text()
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


@pytest.mark.slow
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


@pytest.mark.slow
def test_max_concurrent_one_runs_trials_one_at_a_time(ray_local, tmp_path):
    spec = write_spec(tmp_path, "name: serial\ndataset: digits\n" + TRAIN
                      + "grid: {method: [fp32], seed: [0, 1]}\nresources: {num_cpus: 0.5}\nsave_models: false\n")  # fmt: skip
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--max-concurrent", "1", "--no-progress"]) == 0
    df = read_results(out).sort_values("started_at")
    first_end = pd.Timestamp(df.finished_at.iloc[0])
    assert pd.Timestamp(df.started_at.iloc[1]) >= first_end - pd.Timedelta(seconds=0.5)


@pytest.mark.slow
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


@pytest.mark.slow
def test_locked_directory_is_refused(ray_local, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / ".sweep.lock").write_text(json.dumps({"pid": os.getppid(), "host": socket.gethostname()}))
    assert main(["sweep", "digits-smoke", "--out", str(out)]) == 2
    assert "another sweep" in capsys.readouterr().err


@pytest.mark.slow
def test_group_without_fp32_trial_pretrains_once_in_its_own_task(ray_local, tmp_path):
    spec = write_spec(tmp_path, "name: shared\ndataset: digits\n" + TRAIN
                      + "grid: {method: [qat], bits: [8, 4], seed: [7]}\nresources: {num_cpus: 1}\nsave_models: false\n")  # fmt: skip
    out = tmp_path / "out"
    assert main(["sweep", str(spec), "--out", str(out), "--no-progress"]) == 0
    df = read_results(out)
    assert len(df) == 2 and (df.status == "ok").all()
    assert df.fp32_cached.all() and df.fp32_node_ip.notna().all()  # neither trial pretrained
    assert df.fp32_train_s.nunique() == 1  # one checkpoint for both
    logs = [ResultStore(out).log_path(t).read_text() for t in df.trial_id]
    for log in logs:
        assert "from pretraining task for" in log and "FP32 model trained in" in log


# ---- pieces, without Ray ------------------------------------------------------------


def test_execute_trial_outside_ray_records_cpu_and_log(tmp_path, monkeypatch):
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "cache"))
    spec = spec_from_dict({"name": "x", "dataset": "digits", "train": {"epochs": 1, "batch_size": 64, "calib_batches": 2, "limit_train": 300},
                           "include": [{"method": "ptq", "bits": 8}]})  # fmt: skip
    t = spec.trials[0]
    res = execute_trial(
        dict(t.config), t.trial_id, {"sweep": "x", "label": t.label, "origin": t.origin, "num_cpus": 1, "save_models": True}
    )
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


# ---- FP32 pretraining as a dependency, without Ray ------------------------------------


def _ptq_trial(seed: int = 0):
    spec = spec_from_dict({"name": "x", "dataset": "digits", "train": {"epochs": 1, "batch_size": 64, "calib_batches": 2, "limit_train": 300, "seed": seed},
                           "include": [{"method": "ptq", "bits": 8}]})  # fmt: skip
    t = spec.trials[0]
    return t, {"sweep": "x", "label": t.label, "origin": t.origin, "num_cpus": 1, "save_models": False}


def test_pretrained_model_travels_to_another_node_cache(tmp_path, monkeypatch):
    from qatlab.config import TrainConfig
    from qatlab.train import fp32_cache_path

    t, meta = _ptq_trial()
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "node-a"))
    summary, payload = pretrain(dict(t.config), meta)
    assert summary["error"] is None and "checkpoint" not in summary and isinstance(payload["checkpoint"], bytes)
    assert "FP32 model trained in" in payload["log"]
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "node-b"))  # another node: an empty cache
    res = execute_trial(dict(t.config), t.trial_id, meta, payload)
    rec = res["record"]
    assert rec["status"] == "ok" and rec["fp32_cached"] and rec["failure"] is None
    assert fp32_cache_path(TrainConfig.from_dict(dict(t.config))).read_bytes() == payload["checkpoint"]
    assert "installed into this node's cache" in res["log"] and "FP32 pretraining" in res["log"]


def test_failed_pretraining_fails_the_trial_with_its_error(tmp_path, monkeypatch):
    import qatlab.data
    import qatlab.train

    t, meta = _ptq_trial()
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "cache"))

    def no_data(*_a, **_k):
        raise RuntimeError("no digits on this node")

    monkeypatch.setattr(qatlab.data, "load_dataset", no_data)
    summary, payload = pretrain(dict(t.config), meta)
    assert "no digits on this node" in summary["error"] and "checkpoint" not in payload

    def must_not_run(*_a, **_k):
        raise AssertionError("the trial ran without its FP32 model")

    monkeypatch.setattr(qatlab.train, "run_trial", must_not_run)
    res = execute_trial(dict(t.config), t.trial_id, meta, payload)
    rec = res["record"]
    assert rec["status"] == "failed" and rec["failure"] == "fp32" and rec["trial_id"] == t.trial_id
    assert "FP32 pretraining (pretraining task for" in rec["error"] and "no digits on this node" in rec["error"]
    assert "no digits on this node" in res["log"] and res["artifacts"] == {}


def test_fp32_trial_hands_on_its_model_or_its_error(tmp_path, monkeypatch):
    import qatlab.train
    from qatlab.config import TrainConfig
    from qatlab.train import fp32_cache_path
    from workbook.sweep.worker import execute_source_trial

    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path / "cache"))
    spec = spec_from_dict({"name": "x", "dataset": "digits", "train": {"epochs": 1, "batch_size": 64, "limit_train": 300},
                           "include": [{"method": "fp32"}]})  # fmt: skip
    t = spec.trials[0]
    meta = {"sweep": "x", "label": t.label, "origin": t.origin, "num_cpus": 1, "save_models": False}
    res, payload = execute_source_trial(dict(t.config), t.trial_id, meta)
    assert res["record"]["status"] == "ok" and not res["record"]["fp32_cached"] and payload["error"] is None
    assert payload["checkpoint"] == fp32_cache_path(TrainConfig.from_dict(dict(t.config))).read_bytes()
    assert t.trial_id in payload["source"]

    def broken(cfg, out_dir=None):
        return {"status": "failed", "error": "Traceback: the fp32 trial broke"}

    monkeypatch.setattr(qatlab.train, "run_trial", broken)
    fp32_cache_path(TrainConfig.from_dict(dict(t.config))).unlink()
    res, payload = execute_source_trial(dict(t.config), t.trial_id, meta)
    assert res["record"]["status"] == "failed" and "the fp32 trial broke" in payload["error"] and "checkpoint" not in payload


def test_install_refuses_a_foreign_or_empty_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setenv("QATLAB_CACHE", str(tmp_path))
    t, _ = _ptq_trial(seed=0)
    other, _ = _ptq_trial(seed=1)
    from workbook.sweep.fp32 import fp32_key

    with pytest.raises(Fp32PayloadError, match="given to a trial with key"):
        install({"fp32_key": fp32_key(other.config), "checkpoint": b"x"}, t.config)
    with pytest.raises(Fp32PayloadError, match="carries no checkpoint bytes"):
        install({"fp32_key": fp32_key(t.config), "checkpoint": b""}, t.config)
    assert not any(tmp_path.rglob("*.pt"))


# ---- which tasks in flight run: inferred from capacity, first come first served ------


def _flight_ops():
    from hypothesis import strategies as st

    op = st.one_of(
        st.tuples(st.just("add"), st.sampled_from(["a", "b", "c"]), st.booleans(), st.booleans()),
        st.tuples(st.just("end"), st.integers(0, 50)),
        st.tuples(st.just("fp32_done"), st.sampled_from(["a", "b", "c"])),
        st.tuples(st.just("capacity"), st.integers(0, 4)),
    )
    return st.lists(op, max_size=40)


def _reference_running(history):
    """Replay as Ray's slots would: runnable jobs in order of becoming runnable take free slots."""
    running, order = set(), []
    for step in history:
        if step[0] == "runnable":
            order.append(step[1])
        elif step[0] == "end":
            running.discard(step[1])
            order = [j for j in order if j != step[1]]
        elif step[0] == "fill":
            for j in order:
                if len(running) >= step[1]:
                    break
                running.add(j)
    return running


def test_flight_infers_running_like_fifo_slots():
    from hypothesis import given, settings

    @settings(max_examples=150, deadline=None)
    @given(_flight_ops())
    def check(ops):
        f = Flight()
        history: list[tuple] = []
        refs: list[int] = []
        capacity, now = 2, 0.0
        for op in ops:
            now += 1.0
            if op[0] == "add":
                _, key, source, runnable = op
                ref = len(refs)
                refs.append(ref)
                runnable = runnable or source
                f.add(ref, FP32 if source and runnable else TRIAL, key, None if source and runnable else f"t{ref}", now,
                      runnable=runnable, source=source)  # fmt: skip
                if runnable:
                    history.append(("runnable", ref))
            elif op[0] == "end" and op[1] < len(refs) and op[1] in f.jobs:
                f.pop(op[1])
                history.append(("end", op[1]))
            elif op[0] == "fp32_done":
                waiting = sorted((r for r, j in f if j.key == op[1] and j.runnable_since is None), key=lambda r: f.jobs[r].seq)
                f.fp32_done(op[1], now)
                history += [("runnable", r) for r in waiting]
            elif op[0] == "capacity":
                capacity = op[1]
            f.infer_running(capacity, now)
            history.append(("fill", capacity))
            running = {r for r, j in f if j.running_since is not None}
            assert running == _reference_running(history)
            assert all(f.jobs[r].runnable_since is not None for r in running)
            counts = f.counts()
            assert counts["running"] + counts["queued"] == sum(1 for _, j in f if j.kind == TRIAL)
            for r, j in f.overdue(1.5, now):
                assert now - j.running_since > 1.5 and r in running

    check()


def test_flight_rejects_inconsistent_jobs():
    f = Flight()
    with pytest.raises(ValueError, match="job kind"):
        f.add(1, "other", "k", "t", 0.0, True)
    with pytest.raises(ValueError, match="needs trial id"):
        f.add(1, TRIAL, "k", None, 0.0, True)
    with pytest.raises(ValueError, match="source"):
        f.add(1, FP32, "k", None, 0.0, True, source=False)
    f.add(1, FP32, "k", None, 0.0, True, source=True)
    with pytest.raises(ValueError, match="already in flight"):
        f.add(1, TRIAL, "k", "t", 0.0, True)
    f.infer_running(float("inf"), 1.0)
    assert f.counts() == {"running": 0, "queued": 0, "pretraining": 1}
