"""QAT on a GPU: the training step vs the FP32 step, and one real trial trained on cuda.

    python benchmarks/qat_gpu.py [--batch 256] [--repeats 30] [--trial] [--json FILE]

Step timing: for the default CNN (lenet) and the residual CNN (resnet8) on 28x28
inputs, one step = forward + cross-entropy + backward + Adam step on a fixed batch on
the GPU, after calibration; FP32, QAT W8A8 LSQ (learned scales, LSQ+ offsets) and
QAT W8A8 clipped STE (observed ranges) are timed round-robin (interleaved), each
step closed by ``torch.cuda.synchronize()``, median of ``--repeats``.
The target is a QAT step <= 1.5x the FP32 step.

``--trial`` also runs one trial of the training loop (``run_trial``, the ``quick``
profile on a 6,000-image subset, W8A8 LSQ) with ``device="cuda"`` and prints its
record: ``device`` and ``gpu_name`` say where it trained, and the IntModel's
agreement with the fake-quant model is checked as on the CPU. Needs the
Fashion-MNIST files (``$QATLAB_DATA`` or the Debian package).

Needs torch with CUDA; without a GPU it says so and exits with status 2
(``--device cpu`` runs the same code on the CPU, as a smoke test).
Run from the repository root; no Ray, papermill or network needed.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "lib"), str(ROOT)]

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from qatlab.atomic import write_json  # noqa: E402
from qatlab.timing import interleaved  # noqa: E402
from qatlab.train import make_optimizer  # noqa: E402

TARGET = 1.5


def _models(name: str, x: torch.Tensor) -> dict[str, torch.nn.Module]:
    from qatlab.models import build_model
    from qatlab.nn import calibrate, prepare_qat, set_observe
    from qatlab.quant import QuantSpec

    torch.manual_seed(0)
    fp32 = build_model(name, 10, tuple(x.shape[1:])).to(x.device)
    out: dict[str, torch.nn.Module] = {"fp32": fp32}
    for ste in ("lsq", "clipped"):
        q = prepare_qat(fp32, QuantSpec(bits=8, granularity="channel"), QuantSpec(bits=8, symmetric=False, estimator="ema"), ste).to(
            x.device
        )
        calibrate(q, [x])
        set_observe(q, True)  # QAT keeps observing activations (and weights, for fixed scales)
        out[f"qat_{ste}"] = q
    return out


def _step_fn(m: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> Callable[[], None]:
    m.train()
    opt = make_optimizer([p for p in m.parameters() if p.requires_grad], lr=1e-4)
    sync = torch.cuda.synchronize if x.is_cuda else (lambda: None)

    def step() -> None:
        loss = F.cross_entropy(m(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sync()  # a step's time is until the GPU has finished it

    return step


def step_times(name: str, batch: int, repeats: int, device: torch.device, warmup: int = 5) -> dict[str, Any]:
    gen = torch.Generator(device="cpu").manual_seed(0)
    x = torch.randn(batch, 1, 28, 28, generator=gen).to(device)
    y = torch.randint(0, 10, (batch,), generator=gen).to(device)
    steps = {k: _step_fn(m, x, y) for k, m in _models(name, x).items()}
    # The warm-up covers cuDNN autotuning, the allocator and lazy initialisation.
    t = interleaved(steps, repeats, warmup)
    row: dict[str, Any] = {"model": name, "batch": batch, **{f"{k}_ms": round(v * 1e3, 3) for k, v in t.items()}}
    for k in ("qat_lsq", "qat_clipped"):
        row[f"{k}_vs_fp32"] = round(t[k] / t["fp32"], 3)
    row["meets_target"] = all(row[f"{k}_vs_fp32"] <= TARGET for k in ("qat_lsq", "qat_clipped"))
    return row


def gpu_trial(device: str = "cuda") -> dict[str, Any]:
    from qatlab.config import profile
    from qatlab.train import run_trial

    with tempfile.TemporaryDirectory() as cache:
        os.environ.setdefault("QATLAB_CACHE", cache)
        cfg = profile("quick", method="qat", ste="lsq", limit_train=6000, device=device)
        r = run_trial(cfg)
    keys = ("status", "error", "device", "gpu_name", "fp32_acc", "test_acc", "int_acc", "int_agreement", "train_s")
    row = {k: r.get(k) for k in keys if k in r}
    row["trained_on_gpu"] = r.get("status") == "ok" and str(r.get("device", "")).startswith("cuda")
    row["ok"] = r.get("status") == "ok" and str(r.get("device", "")).startswith(device)
    return row


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=256)
    ap.add_argument("--repeats", type=int, default=30)
    ap.add_argument("--models", default="lenet,resnet8")
    ap.add_argument("--trial", action="store_true", help="also run one training-loop trial on cuda")
    ap.add_argument("--json", default=None)
    ap.add_argument("--device", default="cuda", help="cuda (the benchmark) or cpu (a smoke run of the same code)")
    ap.add_argument("--warmup", type=int, default=5)
    a = ap.parse_args(argv)
    device = torch.device(a.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        print("qat_gpu: no CUDA GPU visible to torch; this benchmark needs one", file=sys.stderr)
        return 2
    torch.backends.cudnn.benchmark = True
    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else None
    out: dict[str, Any] = {"gpu": gpu, "device": str(device), "torch": torch.__version__, "steps": []}
    print(json.dumps({"gpu": out["gpu"], "torch": out["torch"]}), flush=True)
    for name in a.models.split(","):
        row = step_times(name, a.batch, a.repeats, device, a.warmup)
        out["steps"].append(row)
        print(json.dumps(row), flush=True)
    if a.trial:
        out["trial"] = gpu_trial(a.device)
        print(json.dumps(out["trial"]), flush=True)
    if a.json:
        write_json(a.json, out)
    ok = all(r["meets_target"] for r in out["steps"]) and (not a.trial or out["trial"]["ok"])
    print(
        f"{'PASS' if ok else 'FAIL'}  QAT step <= {TARGET}x FP32 on {device}" + (f" and the trial trained on {device}" if a.trial else "")
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
