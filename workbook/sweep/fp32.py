"""FP32 pretraining shared by the trials that start from the same FP32 model, as a Ray dependency.

Each group of trials with one ``fp32_key`` has a source task that returns the FP32
checkpoint's bytes as a second result: the group's ``fp32`` trial when it runs now
(it pretrains anyway), else a task that only pretrains. The driver passes that
ObjectRef to every other trial of the group, so Ray runs them after their source, on
any node (re-running the source only to rebuild a result lost with its node), and each
installs the bytes into its node's FP32 cache, where ``run_trial`` finds them instead of
pretraining again. A source that fails hands its error on instead of the bytes.
"""

from __future__ import annotations

import io
import time
import traceback
from typing import Any, Mapping

from workbook.sweep.node import attempt, captured, pick_device, worker_info
from workbook.sweep.records import iso


class Fp32PayloadError(ValueError):
    """A pretraining result that does not belong to the trial it was given to, or carries no model."""


def fp32_key(config: Mapping[str, Any]) -> str:
    """The key under which trials share FP32 pretraining (``TrainConfig.fp32_key``)."""
    from qatlab.config import TrainConfig

    return TrainConfig.from_dict(dict(config)).fp32_key


def from_cache(config: Mapping[str, Any], source: str, error: str | None) -> dict[str, Any]:
    """The payload a source hands on: this node's cached checkpoint, or ``error`` when there is none."""
    from qatlab.config import TrainConfig
    from qatlab.train import fp32_cache_path

    info = worker_info()
    cfg = TrainConfig.from_dict(dict(config))
    out: dict[str, Any] = {"fp32_key": cfg.fp32_key, "source": source, "node_ip": info["node_ip"], "attempts": attempt()}
    path = fp32_cache_path(cfg)
    if error is None and path.is_file():
        out["checkpoint"] = path.read_bytes()
        out["error"] = None
    else:
        out["error"] = error or f"no FP32 model was left in {path}"
    return out


def pretrain(config: Mapping[str, Any], meta: Mapping[str, Any]) -> tuple[dict[str, Any], dict[str, Any]]:
    """Pretrain (or read from this node's cache) the FP32 model of ``config``.

    Returns (summary for the driver, payload for the dependent trials). Never raises
    for a failing pretraining: the payload carries the traceback, and each dependent
    trial is recorded failed with it. ``meta``: num_cpus (threads), label (for the log).
    """
    import torch

    started = time.time()
    info = worker_info()
    log = io.StringIO()
    error = None
    try:
        from qatlab.config import TrainConfig
        from qatlab.data import load_dataset
        from qatlab.train import pretrain_fp32, resolve_device

        cfg_dict = dict(config)
        cfg_dict["device"] = pick_device(cfg_dict.get("device", "auto"), info["gpu_ids"], bool(torch.cuda.is_available()))
        cfg = TrainConfig.from_dict(cfg_dict)
        torch.set_num_threads(max(1, int(meta.get("num_cpus") or 1)))
        log.write(f"{iso(started)} FP32 pretraining {cfg.fp32_key} (first trial {meta.get('label')}) on node "
                  f"{info['node_ip']} ({info['hostname']}, pid {info['worker_pid']}), device {cfg.device}\n")  # fmt: skip
        with captured(log):
            # The same split as run_trial's: the FP32 key covers every field it depends on.
            splits = load_dataset(cfg.dataset, val_fraction=cfg.val_fraction, limit_train=cfg.limit_train,
                                  limit_test=cfg.limit_test, seed=cfg.seed)  # fmt: skip
            _, res = pretrain_fp32(cfg, splits, resolve_device(cfg.device), use_cache=True)
        log.write(f"{iso(time.time())} FP32 model {'read from this node' if res['fp32_cached'] else 'trained'} "
                  f"in {time.time() - started:.3f} s\n")  # fmt: skip
    except Exception:
        error = traceback.format_exc()
        log.write(error)
    payload = from_cache(config, f"pretraining task for {meta.get('label')}", error)
    payload["log"] = log.getvalue()
    payload["task_s"] = round(time.time() - started, 3)
    return {k: v for k, v in payload.items() if k != "checkpoint"}, payload


def install(payload: Mapping[str, Any], config: Mapping[str, Any]) -> str:
    """Put ``payload``'s checkpoint into this node's FP32 cache for ``config``; return a log line.

    Atomic, so trials installing the same model side by side never see half a file.
    """
    from qatlab.atomic import write_bytes
    from qatlab.config import TrainConfig
    from qatlab.train import fp32_cache_path

    cfg = TrainConfig.from_dict(dict(config))
    if payload.get("fp32_key") != cfg.fp32_key:
        raise Fp32PayloadError(f"FP32 checkpoint for key {payload.get('fp32_key')!r} given to a trial with key {cfg.fp32_key!r}")
    data = payload.get("checkpoint")
    if not isinstance(data, bytes) or not data:
        raise Fp32PayloadError(f"FP32 result for key {cfg.fp32_key!r} carries no checkpoint bytes")
    path = fp32_cache_path(cfg)
    same = path.is_file() and path.stat().st_size == len(data) and path.read_bytes() == data
    if not same:
        write_bytes(path, data)
    return (f"FP32 model {cfg.fp32_key} from {payload.get('source')} on node {payload.get('node_ip')}: "
            f"{'already in' if same else 'installed into'} this node's cache")  # fmt: skip
