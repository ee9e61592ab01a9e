"""Loading what the notebooks study: a run's results and its trained models."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn


def trained_fp32(
    run_dir: str | Path | None, dataset: str = "digits", model: str = "lenet", n_images: int = 64
) -> tuple[nn.Module, torch.Tensor, str]:
    """The FP32 model of a run (its fp32 trial's checkpoint) and a batch of its test images.

    Without a run (or without an fp32 checkpoint in it) a model of the ``tiny`` profile
    is trained on the spot (seconds on digits), so the study still runs on real weights.
    """
    from qatlab.data import load_dataset
    from qatlab.train import load_checkpoint

    if run_dir is not None:
        for p in sorted(Path(run_dir).glob("trials/*/model.pt")):
            m, cfg, _ = load_checkpoint(p)
            if cfg.method == "fp32":
                x = load_dataset(cfg.dataset, limit_test=n_images, seed=cfg.seed, loader_args=cfg.loader_args or None).test_tensors()[0]
                return m, x, f"{cfg.model} on {cfg.dataset}, FP32 trial {p.parent.name} of {run_dir}"
    from qatlab.config import profile
    from qatlab.train import pretrain_fp32, resolve_device

    cfg = profile("tiny", dataset=dataset, model=model, method="fp32")
    splits = load_dataset(cfg.dataset, limit_test=n_images)
    m, _ = pretrain_fp32(cfg, splits, resolve_device("cpu"))
    return m.eval(), splits.test_tensors()[0], f"{model} on {dataset}, trained here ({cfg.epochs} epochs): no FP32 checkpoint in the run"
