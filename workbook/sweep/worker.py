"""One trial inside its Ray task: device, threads, log capture, the record it returns."""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Mapping, TextIO

from workbook.sweep.fp32 import from_cache, install
from workbook.sweep.node import attempt, captured, pick_device, worker_info
from workbook.sweep.records import iso

LOG_TAIL_BYTES = 4 << 20  # a trial's log is capped (its tail kept) before it travels back


def execute_trial(
    config: Mapping[str, Any],
    trial_id: str,
    meta: Mapping[str, Any],
    fp32: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Run one trial on this worker; return ``{"record", "log", "artifacts"}``.

    ``meta``: sweep, label, origin, num_cpus, save_models, submitted_at, live_log
    ({node_id, path}: where the driver can read a live log, when this worker is on its
    node). ``fp32``: the result of the trial's FP32 pretraining task (``fp32.pretrain``),
    installed into this node's cache first; without it run_trial pretrains (or reads
    this node's cache) itself. Picks the device: CUDA only when Ray assigned this task
    a GPU *and* CUDA works here; the logical GPU ids are recorded either way.
    """
    started = time.time()
    info = worker_info()

    import torch

    from qatlab.train import run_trial

    cfg = dict(config)
    cuda = bool(torch.cuda.is_available())
    cfg["device"] = pick_device(cfg.get("device", "auto"), info["gpu_ids"], cuda)
    # One trial per `num_cpus`: more threads than CPUs asked for would slow neighbours.
    torch.set_num_threads(max(1, int(meta.get("num_cpus") or 1)))

    log_path = _log_file(meta, info, trial_id)
    artifacts: dict[str, bytes] = {}
    try:
        with open(log_path, "w", encoding="utf-8", buffering=1) as fh:
            record = _run_logged(fh, cfg, trial_id, meta, info, cuda, fp32, run_trial, artifacts)
        log = _tail(log_path)
    finally:
        log_path.unlink(missing_ok=True)
    record.update(
        {
            "started_at": iso(started),
            "finished_at": iso(time.time()),
            "task_s": round(time.time() - started, 3),
            "queue_s": round(max(0.0, started - float(meta.get("submitted_at", started))), 3),
            "attempts": attempt(),
        }
    )
    return {"record": record, "log": log, "artifacts": artifacts}


def execute_source_trial(config: Mapping[str, Any], trial_id: str, meta: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Run an ``fp32`` trial (``execute_trial``) and hand on the FP32 model it trained."""
    res = execute_trial(config, trial_id, meta)
    rec = res["record"]
    error = None if rec.get("status") == "ok" else (rec.get("error") or "the fp32 trial failed")
    payload = from_cache(config, f"trial {meta.get('label')} [{trial_id}]", error)
    payload["log"] = f"{iso(time.time())} FP32 model of trial {trial_id} on node {payload['node_ip']}\n"
    return res, payload


def _log_file(meta: Mapping[str, Any], info: Mapping[str, Any], trial_id: str) -> Path:
    live = meta.get("live_log") or {}
    if live.get("node_id") and live.get("node_id") == info["node_id"] and live.get("path"):
        try:  # same node as the driver: `tail -f` works while the trial runs
            path = Path(live["path"])
            path.parent.mkdir(parents=True, exist_ok=True)
            path.touch()
            return path
        except OSError:  # not the driver's filesystem after all (a container): a temp file
            pass
    fd, tmp = tempfile.mkstemp(prefix=f"qatlab-trial-{trial_id}-", suffix=".log")
    os.close(fd)
    return Path(tmp)


def _run_logged(fh: TextIO, cfg: dict[str, Any], trial_id: str, meta: Mapping[str, Any], info: Mapping[str, Any],
                cuda: bool, fp32: Mapping[str, Any] | None, run_trial: Any, artifacts: dict[str, bytes]) -> dict[str, Any]:  # fmt: skip
    import torch

    def say(msg: str) -> None:
        fh.write(f"{iso(time.time())} {msg}\n")

    say(f"trial {trial_id}: {meta.get('label')} (sweep {meta.get('sweep')}, {meta.get('origin')}), attempt {attempt()}")
    say(f"node {info['node_ip']} ({info['node_id']}), host {info['hostname']}, pid {info['worker_pid']}")
    say(f"ray gpu ids {info['gpu_ids']}, CUDA_VISIBLE_DEVICES={info['cuda_visible_devices']!r}, "
        f"cuda available {cuda} -> device {cfg['device']}; torch {torch.__version__}, {torch.get_num_threads()} threads")  # fmt: skip
    say("config " + json.dumps(cfg, sort_keys=True))
    fp32_error = fp32.get("error") if fp32 is not None else None
    if fp32 is not None:
        fh.write(str(fp32.get("log") or ""))
    if fp32_error:
        # The trial starts from that model: without it there is nothing to run.
        record: dict[str, Any] = {"status": "failed", "train_s": 0.0,
                                  "error": f"FP32 pretraining ({fp32.get('source')}) failed:\n{fp32_error}"}  # fmt: skip
    else:
        if fp32 is not None:
            try:
                say(install(fp32, cfg))
            except Exception as e:  # the trial still runs: it pretrains on this node instead
                say(f"warning: cannot use the FP32 model of {fp32.get('source')} ({type(e).__name__}: {e}); pretraining here")
        with tempfile.TemporaryDirectory(prefix="qatlab-artifacts-") as adir, captured(fh):
            cpu0 = time.process_time()
            record = run_trial(cfg, out_dir=adir if meta.get("save_models", True) else None)
            # CPU seconds of this process: cpu_s / train_s far below the threads used
            # means the trial waited for a CPU (an oversubscribed or shared machine).
            record["cpu_s"] = round(time.process_time() - cpu0, 3)
            if record.get("status") == "ok":
                for p in sorted(Path(adir).iterdir()):
                    if p.is_file() and not p.name.startswith("."):
                        artifacts[p.name] = p.read_bytes()
    if record.get("error"):
        fh.write(record["error"].rstrip() + "\n")
    say(f"status {record.get('status')}: test_acc {record.get('test_acc')}, fp32_acc {record.get('fp32_acc')}, "
        f"int_acc {record.get('int_acc')}, {record.get('train_s')} s; artifacts {sorted(artifacts)}")  # fmt: skip
    # run_trial leaves config fields out when the config itself is rejected.
    full = {**cfg, **record}
    if full.get("trial_id") not in (None, trial_id):
        say(f"warning: run_trial computed trial id {full['trial_id']}, the spec {trial_id}")
    full["trial_id"] = trial_id
    full.update({k: meta.get(k) for k in ("sweep", "label", "origin")})
    full["failure"] = None if full.get("status") == "ok" else "fp32" if fp32_error else "trial"
    full.update(info)
    full["cuda_available"] = cuda
    full["torch_version"] = torch.__version__
    full["fp32_node_ip"] = fp32.get("node_ip") if fp32 is not None else None
    return full


def _tail(path: Path) -> str:
    size = path.stat().st_size
    with open(path, "rb") as f:
        if size > LOG_TAIL_BYTES:
            f.seek(size - LOG_TAIL_BYTES)
            head = f"[log truncated: first {size - LOG_TAIL_BYTES} bytes left out]\n".encode()
            return (head + f.read()).decode("utf-8", "replace")
        return f.read().decode("utf-8", "replace")
