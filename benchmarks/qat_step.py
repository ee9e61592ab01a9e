"""QAT training step time: ours vs torch.ao's QAT vs the FP32 step (ratios, same run).

    python benchmarks/qat_step.py [--model lenet] [--batch 128] [--repeats 20] [--threads N]

One step = forward + cross-entropy + backward + Adam step on a fixed batch,
timed round-robin (interleaved) with the median taken, after a calibration pass.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from peer import torch_ao_qat  # noqa: E402

from qatlab.models import build_model  # noqa: E402
from qatlab.nn import calibrate, prepare_qat, set_observe  # noqa: E402
from qatlab.quant import QuantSpec  # noqa: E402
from workbook.bench import interleaved, machine  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", default="lenet")
    ap.add_argument("--batch", type=int, default=128)
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's choice)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)
    x = torch.randn(a.batch, 1, 28, 28)
    y = torch.randint(0, 10, (a.batch,))
    fp32 = build_model(a.model, 10, (1, 28, 28))
    models = {"fp32": fp32}
    for ste in ("lsq", "clipped"):
        q = prepare_qat(fp32, QuantSpec(bits=8, granularity="channel"), QuantSpec(bits=8, symmetric=False, estimator="ema"), ste)
        calibrate(q, [x])
        set_observe(q, True)  # QAT keeps observing activations (and weights, for fixed scales)
        models[f"ours_{ste}"] = q
    models["torch_ao"] = torch_ao_qat(fp32, x)
    steps = {}
    for name, m in models.items():
        m.train()
        opt = torch.optim.Adam([p for p in m.parameters() if p.requires_grad], lr=1e-4)

        def step(m=m, opt=opt) -> None:
            loss = F.cross_entropy(m(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

        steps[name] = step
    t = interleaved(steps, repeats=a.repeats, warmup=3)
    row = {
        "model": a.model,
        "batch": a.batch,
        **{f"{k}_ms": round(v * 1e3, 2) for k, v in t.items()},
        "ours_lsq_vs_torch_ao": round(t["ours_lsq"] / t["torch_ao"], 3),
        "ours_clipped_vs_torch_ao": round(t["ours_clipped"] / t["torch_ao"], 3),
        "ours_lsq_vs_fp32": round(t["ours_lsq"] / t["fp32"], 3),
        "ours_clipped_vs_fp32": round(t["ours_clipped"] / t["fp32"], 3),
        "torch_ao_vs_fp32": round(t["torch_ao"] / t["fp32"], 3),
    }
    print(json.dumps({"machine": machine()}))
    print(json.dumps(row))


if __name__ == "__main__":
    main()
