"""The one training loop: a pure function of a TrainConfig that returns a result record.

    record = run_trial(TrainConfig(method="qat", w_bits=4, a_bits=4, ste="lsq"))

Steps: FP32 pretraining (cached on disk by ``fp32_key``, so every trial of a sweep
that shares it trains it once), then per method: nothing (fp32), calibration (ptq),
or calibration + QAT fine-tuning (qat); then evaluation of the fake-quant model and
of its integer model (``convert`` + an IntModel executor: the CPU reference unless
``int_backend`` / ``$QATLAB_INT_BACKEND`` names another; the record's ``int_backend``
says which ran — all of them give the same codes).
Deterministic under a seed on CPU: same config, same metrics.

Data: training, calibration and evaluation all go through a ``DataLoader``
(``num_workers`` from the config, pinned memory on CUDA), so a dataset streamed from
disk (an image folder, a user's loader) need never fit in memory. Splits held as
tensors (the built-in datasets, ``.npz`` files) are evaluated by slicing the tensors
directly, as they always were: the same numbers, without a loader's per-item cost.
"""

from __future__ import annotations

import os
import re
import time
import traceback
from pathlib import Path
from typing import Any, Callable, Iterator

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, Dataset, TensorDataset

from qatlab.atomic import atomic_path
from qatlab.config import TrainConfig
from qatlab.data import DataSplits, load_dataset
from qatlab.intmodel import IntModel, convert, get_runner, predict
from qatlab.nn import calibrate, freeze_bn, prepare_qat, set_observe
from qatlab.quant import QuantSpec
from qatlab.usermodel import make_model

CHECKPOINT_FORMAT = "qatlab.checkpoint"


def cache_dir() -> Path:
    base = os.environ.get("QATLAB_CACHE") or os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"), "qatlab")
    return Path(base)


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    dev = torch.device(name)
    if dev.type == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(f"device {name!r} requested but no CUDA GPU is available")
    return dev


def seed_everything(seed: int) -> torch.Generator:
    torch.manual_seed(seed)
    return torch.Generator().manual_seed(seed)


def loader(
    ds: Dataset, batch_size: int, gen: torch.Generator | None, shuffle: bool, num_workers: int = 0, pin_memory: bool = False
) -> DataLoader:
    """Batches of ``ds``. The shuffle order comes from ``gen`` in this process whatever
    ``num_workers`` is, so workers change the speed, never the batches."""
    return DataLoader(ds, batch_size=batch_size, shuffle=shuffle, generator=gen, num_workers=num_workers, pin_memory=pin_memory)


def _loader_for(cfg: TrainConfig, device: torch.device) -> Callable[..., DataLoader]:
    def make(ds: Dataset, batch_size: int, gen: torch.Generator | None, shuffle: bool) -> DataLoader:
        return loader(ds, batch_size, gen, shuffle, cfg.num_workers, device.type == "cuda")

    return make


def make_optimizer(params: list[nn.Parameter], lr: float) -> torch.optim.Adam:
    """Adam as every training loop here builds it.

    The fused kernel when the parameters allow it: a quantized model has ~3x the
    parameter tensors of its FP32 original (a scale, a zero point, a clip per
    quantizer), and the per-tensor loop of the default Adam costs more per step than
    the quantizers' arithmetic does. Same algorithm, one kernel call.
    """
    fused = bool(params) and all(p.device.type in ("cpu", "cuda") and p.dtype.is_floating_point for p in params)
    return torch.optim.Adam(params, lr=lr, fused=fused or None)


def fit(
    model: nn.Module,
    data: DataLoader,
    epochs: int,
    lr: float,
    device: torch.device,
    on_step: Callable[[int, int], None] | None = None,
) -> int:
    """Adam with a cosine schedule over ``epochs``; ``on_step(step, total)`` runs before each step."""
    if epochs == 0:
        return 0
    params = [p for p in model.parameters() if p.requires_grad]
    opt = make_optimizer(params, lr)
    total = epochs * len(data)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, total))
    model.train()
    step = 0
    for _ in range(epochs):
        for x, y in data:
            if on_step is not None:
                on_step(step, total)
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            step += 1
    return step


@torch.no_grad()
def predictions(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int = 1000) -> torch.Tensor:
    model.eval()
    out = [model(x[i : i + batch_size].to(device)).argmax(1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def batches(
    ds: Dataset, batch_size: int = 1000, num_workers: int = 0, pin_memory: bool = False
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """``(x, y)`` batches of ``ds`` in order: slices of a TensorDataset, else a DataLoader's."""
    if isinstance(ds, TensorDataset):
        x, y = ds.tensors
        for i in range(0, len(x), batch_size):
            yield x[i : i + batch_size], y[i : i + batch_size]
        return
    yield from loader(ds, batch_size, None, False, num_workers, pin_memory)


@torch.no_grad()
def evaluate(
    model: nn.Module, ds: Dataset, device: torch.device, batch_size: int = 1000, num_workers: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(predictions, labels) over ``ds``, streamed batch by batch."""
    if isinstance(ds, TensorDataset):  # the in-memory path, exactly as before streaming existed
        x, y = ds.tensors
        return predictions(model, x, device, batch_size), y
    model.eval()
    preds, labels = [], []
    for x, y in batches(ds, batch_size, num_workers, device.type == "cuda"):
        preds.append(model(x.to(device, non_blocking=True)).argmax(1).cpu())
        labels.append(torch.as_tensor(y))
    if not preds:
        return torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    return torch.cat(preds), torch.cat(labels)


def int_predictions(im: IntModel, ds: Dataset, backend: str, batch_size: int = 1000, num_workers: int = 0) -> torch.Tensor:
    """The integer model's predictions over ``ds`` (in order), streamed batch by batch."""
    if isinstance(ds, TensorDataset):
        return predict(im, ds.tensors[0], backend=backend)  # type: ignore[arg-type]
    out = [predict(im, x, batch_size, backend=backend) for x, _ in batches(ds, batch_size, num_workers)]  # type: ignore[arg-type]
    return torch.cat(out) if out else torch.zeros(0, dtype=torch.int64)


def accuracy(pred: torch.Tensor, y: torch.Tensor) -> float:
    return float((pred == y).float().mean()) if len(y) else float("nan")


def _input_batches(data: DataLoader, device: torch.device) -> Iterator[torch.Tensor]:
    for x, _ in data:
        yield x.to(device)


def build_for(cfg: TrainConfig, num_classes: int, input_shape: tuple[int, ...]) -> nn.Module:
    """A fresh model of ``cfg.model`` (zoo name or import path) sized for the data."""
    return make_model(cfg.model, num_classes, input_shape, cfg.model_args)  # type: ignore[arg-type]


def fp32_cache_path(cfg: TrainConfig) -> Path:
    """Where :func:`pretrain_fp32` caches the FP32 model of ``cfg`` on this machine."""

    # Import paths and dataset paths hold ':' and '/': a filesystem-safe stem (the
    # key alone identifies the entry; zoo names and built-in datasets keep theirs).
    def safe(s: str) -> str:
        return re.sub(r"[^A-Za-z0-9._-]+", "_", s).strip("_")[-60:] or "x"

    return cache_dir() / "fp32" / f"{safe(cfg.model)}-{safe(cfg.dataset)}-{cfg.fp32_key}.pt"


def pretrain_fp32(cfg: TrainConfig, splits: DataSplits, device: torch.device, use_cache: bool = True) -> tuple[nn.Module, dict[str, Any]]:
    """The FP32 model for ``cfg`` from the cache, or trained and cached (atomically)."""
    path = fp32_cache_path(cfg)
    model = build_for(cfg, splits.num_classes, splits.input_shape)
    if use_cache and path.exists():
        try:
            ck = torch.load(path, map_location="cpu", weights_only=True)
            model.load_state_dict(ck["state_dict"])
            return model.to(device), {"fp32_cached": True, "fp32_train_s": ck.get("train_s", 0.0)}
        except Exception:  # a damaged cache entry is retrained, never trusted
            path.unlink(missing_ok=True)
    gen = seed_everything(cfg.seed)
    model = build_for(cfg, splits.num_classes, splits.input_shape).to(device)
    t0 = time.perf_counter()
    fit(model, _loader_for(cfg, device)(splits.train, cfg.batch_size, gen, True), cfg.epochs, cfg.lr, device)
    train_s = time.perf_counter() - t0
    if use_cache:
        state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
        with atomic_path(path) as tmp:
            torch.save({"format": CHECKPOINT_FORMAT, "state_dict": state, "config": cfg.to_dict(), "train_s": train_s}, tmp)
    return model, {"fp32_cached": False, "fp32_train_s": train_s}


def specs(cfg: TrainConfig) -> tuple[QuantSpec, QuantSpec]:
    """Weight and activation specs of a trial.

    Weights: signed symmetric (the integer model needs zero-point-free weights), the
    trial's granularity along the output-channel axis. Activations: asymmetric per
    tensor. In QAT, ``minmax`` activation ranges are moving averages (torch.ao's QAT
    default): a running min/max would keep the widest early batch forever.
    """
    w = QuantSpec(bits=cfg.w_bits, symmetric=True, granularity=cfg.granularity, axis=0, estimator=cfg.estimator)
    a_est = "ema" if (cfg.method == "qat" and cfg.estimator == "minmax") else cfg.estimator
    a = QuantSpec(bits=cfg.a_bits, symmetric=False, granularity="tensor", estimator=a_est)
    return w, a


def quantize_model(cfg: TrainConfig, fp32: nn.Module, splits: DataSplits, device: torch.device) -> tuple[nn.Module, int]:
    """PTQ (calibrate) or QAT (calibrate, then fine-tune with late freezing). Returns (model, steps)."""
    w_spec, a_spec = specs(cfg)
    gen = seed_everything(cfg.seed + 1)
    make_loader = _loader_for(cfg, device)
    q = prepare_qat(fp32, w_spec, a_spec, cfg.ste, first_last_bits=cfg.first_last_bits, layer_bits=cfg.layer_bits).to(device)
    calibrate(q, _input_batches(make_loader(splits.train, cfg.batch_size, gen, True), device), cfg.calib_batches)
    if cfg.method == "ptq":
        set_observe(q, False)
        return q, 0
    set_observe(q, True)
    freeze_at: list[int] = []

    def on_step(step: int, total: int) -> None:
        if not freeze_at and step >= int(cfg.freeze_fraction * total):
            freeze_bn(q)
            set_observe(q, False)
            freeze_at.append(step)

    steps = fit(q, make_loader(splits.train, cfg.batch_size, gen, True), cfg.qat_epochs, cfg.qat_lr, device, on_step)
    freeze_bn(q)
    set_observe(q, False)
    return q, steps


def resolve_int_backend(name: str | None = None) -> str:
    """The IntModel executor to evaluate with: ``name``, else ``$QATLAB_INT_BACKEND``, else
    ``cpu``; ``auto`` is ``cuda`` where CuPy sees a GPU, else ``cpu``.

    Raises for an unknown name or a backend that cannot start here, so a trial fails
    before training rather than after it.
    """
    name = name or os.environ.get("QATLAB_INT_BACKEND") or "cpu"
    if name == "auto":
        from qatlab.kernels import cuda_available

        name = "cuda" if torch.cuda.is_available() and cuda_available() else "cpu"
    get_runner(name)
    return name


def run_trial(
    config: TrainConfig | dict[str, Any],
    out_dir: str | os.PathLike[str] | None = None,
    use_cache: bool = True,
    int_backend: str | None = None,
) -> dict[str, Any]:
    """Train and evaluate one trial; never raises for a failing trial: the record says ``failed``.

    ``int_backend``: the IntModel executor for ``int_acc`` (see :func:`resolve_int_backend`);
    not part of the config, as it never changes the integers, only where they are computed.
    """
    t_start = time.perf_counter()
    record: dict[str, Any] = {"status": "failed", "error": None}
    try:
        cfg = config if isinstance(config, TrainConfig) else TrainConfig.from_dict(dict(config))
        record.update(cfg.to_dict())
        record["trial_id"] = cfg.trial_id
        record.update(_run(cfg, out_dir, use_cache, int_backend))
        record["status"] = "ok"
    except Exception:
        record["error"] = traceback.format_exc()
    record["train_s"] = round(time.perf_counter() - t_start, 3)
    return record


def _run(cfg: TrainConfig, out_dir: str | os.PathLike[str] | None, use_cache: bool, int_backend: str | None) -> dict[str, Any]:
    device = resolve_device(cfg.device)
    int_backend = resolve_int_backend(int_backend) if cfg.method != "fp32" else None
    splits = load_dataset(
        cfg.dataset, val_fraction=cfg.val_fraction, limit_train=cfg.limit_train, limit_test=cfg.limit_test,
        seed=cfg.seed, loader_args=cfg.loader_args,
    )  # fmt: skip

    def score(model: nn.Module, ds: Dataset) -> float:
        return accuracy(*evaluate(model, ds, device, num_workers=cfg.num_workers))

    fp32, info = pretrain_fp32(cfg, splits, device, use_cache)
    res: dict[str, Any] = {
        "device": str(device),
        "gpu_name": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "fp32_acc": score(fp32, splits.test),
        "n_train": len(splits.train),  # type: ignore[arg-type]
        "n_test": len(splits.test),  # type: ignore[arg-type]
        **info,
    }
    if cfg.method == "fp32":
        res.update(test_acc=res["fp32_acc"], val_acc=score(fp32, splits.val), qat_steps=0)
        _save(out_dir, cfg, fp32, None, splits)
        return res
    t0 = time.perf_counter()
    q, steps = quantize_model(cfg, fp32, splits, device)
    res["quant_s"] = round(time.perf_counter() - t0, 3)
    res["int_backend"] = int_backend
    fq_pred, y_test = evaluate(q, splits.test, device, num_workers=cfg.num_workers)
    res.update(test_acc=accuracy(fq_pred, y_test), val_acc=score(q, splits.val), qat_steps=steps)
    try:
        im = convert(q.cpu(), splits.input_shape, cfg.rounding, meta={"config": cfg.to_dict()})
        int_pred = int_predictions(im, splits.test, int_backend, num_workers=cfg.num_workers)  # type: ignore[arg-type]
        res.update(int_acc=accuracy(int_pred, y_test), int_agreement=accuracy(int_pred, fq_pred), int_error=None)
    except Exception as e:  # a model the integer path cannot run still has its fake-quant result
        im = None
        res.update(int_acc=None, int_agreement=None, int_error=f"{type(e).__name__}: {e}")
    _save(out_dir, cfg, q, im, splits)
    return res


def _save(out_dir: str | os.PathLike[str] | None, cfg: TrainConfig, model: nn.Module, im: IntModel | None, splits: DataSplits) -> None:
    if out_dir is None:
        return
    d = Path(out_dir)
    d.mkdir(parents=True, exist_ok=True)
    save_checkpoint(model, cfg, d / "model.pt", splits.num_classes, splits.input_shape)
    if im is not None:
        im.save(d / "intmodel.pt")


class CheckpointError(ValueError):
    """A checkpoint that cannot be read: truncated, corrupted, foreign or inconsistent."""


def save_checkpoint(
    model: nn.Module, cfg: TrainConfig, path: str | os.PathLike[str], num_classes: int, input_shape: tuple[int, ...]
) -> None:
    """The trained model's state, config and data shape (atomic). Loads with weights_only=True."""
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    with atomic_path(path, mkdir=False) as tmp:
        torch.save(
            {
                "format": CHECKPOINT_FORMAT,
                "config": cfg.to_dict(),
                "state_dict": state,
                "num_classes": num_classes,
                "input_shape": list(input_shape),
            },
            tmp,
        )


def load_checkpoint(path: str | os.PathLike[str]) -> tuple[nn.Module, TrainConfig, tuple[int, ...]]:
    """Rebuild a trained model (FP32, or the QAT model for ptq/qat) from ``save_checkpoint``'s file.

    Returns (model in eval mode, its config, input shape without batch).
    """
    p = Path(path)
    try:
        ck = torch.load(p, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise CheckpointError(f"{p}: no such checkpoint file") from None
    except Exception as e:
        raise CheckpointError(f"{p}: cannot read checkpoint (truncated, corrupted or not a torch file): {e}") from e
    if not isinstance(ck, dict) or ck.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(f"{p}: not a qatlab checkpoint (format tag missing)")
    try:
        cfg = TrainConfig.from_dict(ck["config"])
        input_shape = tuple(int(v) for v in ck["input_shape"])
        model = build_for(cfg, int(ck["num_classes"]), input_shape)
        if cfg.method != "fp32":
            w_spec, a_spec = specs(cfg)
            model = prepare_qat(model, w_spec, a_spec, cfg.ste, first_last_bits=cfg.first_last_bits, layer_bits=cfg.layer_bits)
        model.load_state_dict(ck["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as e:
        raise CheckpointError(f"{p}: checkpoint does not match its recorded model/config: {e}") from e
    set_observe(model, False)
    freeze_bn(model)
    return model.eval(), cfg, input_shape
