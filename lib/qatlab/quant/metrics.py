"""Error metrics between a tensor and its quantized reconstruction (the reports plot these)."""

from __future__ import annotations

import math

import torch


def _pair(x: torch.Tensor, x_hat: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    if x.shape != x_hat.shape:
        raise ValueError(f"x_hat shape {tuple(x_hat.shape)} does not match x shape {tuple(x.shape)}")
    return x.detach().double(), x_hat.detach().double()


def mse(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = _pair(x, x_hat)
    return float((x - x_hat).pow(2).mean()) if x.numel() else 0.0


def max_abs_error(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = _pair(x, x_hat)
    return float((x - x_hat).abs().max()) if x.numel() else 0.0


def sqnr_db(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """Signal-to-quantization-noise ratio, ``10·log10(Σx² / Σ(x−x̂)²)``; inf when exact."""
    x, x_hat = _pair(x, x_hat)
    noise = float((x - x_hat).pow(2).sum())
    signal = float(x.pow(2).sum())
    if noise == 0.0:
        return math.inf
    if signal == 0.0:
        return -math.inf
    return 10.0 * math.log10(signal / noise)


def cosine_similarity(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    x, x_hat = _pair(x, x_hat)
    denom = float(x.norm() * x_hat.norm())
    return float((x * x_hat).sum()) / denom if denom > 0 else (1.0 if float(x.norm()) == float(x_hat.norm()) else 0.0)


def error_report(x: torch.Tensor, x_hat: torch.Tensor) -> dict[str, float]:
    """All metrics at once, as a record for a results table."""
    return {
        "sqnr_db": sqnr_db(x, x_hat),
        "mse": mse(x, x_hat),
        "max_abs_error": max_abs_error(x, x_hat),
        "cosine": cosine_similarity(x, x_hat),
    }
