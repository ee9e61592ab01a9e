"""BatchNorm (batch statistics) and the quantizer after it: fused vs apart (ratios, same run).

    python benchmarks/batch_norm_fused.py [--threads 1] [--batch 128] [--repeats 15] [--clock cpu|wall] [--json out.json]

The tensors are the 19 BatchNorm inputs of ``build_model("mobilenet")`` at ``--batch``
(random values of their shapes). For each quantizer kind that follows a BN in the QAT
recipes (``observed``: the clipped STE with an EMA range, 4-bit asymmetric; ``pact``: 4-bit,
after a ReLU6; ``lsq``: 4-bit asymmetric, learned step and zero point), one forward and
backward over all 19 tensors, timed round-robin:

* ``apart``: ``FakeQuant(BatchNorm2d(x))``, torch's BN then the quantizer's fused kernel;
* ``fused``: ``FakeQuant.after_batch_norm(x, bn)``, one call for both;
* ``bn_alone``: torch's BN forward and backward, no quantizer (what the FP32 step pays);
* ``copy``: a copy of every tensor, for the scale of one memory pass.
"""

from __future__ import annotations

import argparse
import statistics

import torch
from fused_cli import add_common, start

from qatlab.atomic import write_json
from qatlab.models import build_model
from qatlab.nn import FakeQuant
from qatlab.quant import QuantSpec
from qatlab.timing import interleaved_samples, load_average, machine

KINDS = {
    "observed": (QuantSpec(bits=4, symmetric=False, estimator="ema"), "clipped", None),
    "pact": (QuantSpec(bits=4, symmetric=False, estimator="ema"), "pact", (0.0, 6.0)),
    "lsq": (QuantSpec(bits=4, symmetric=False, estimator="ema"), "lsq", None),
}


def bn_input_shapes(batch: int) -> list[tuple[int, ...]]:
    torch.manual_seed(0)
    model = build_model("mobilenet")
    shapes: list[tuple[int, ...]] = []
    hooks = [
        m.register_forward_hook(lambda m, i, o: shapes.append(tuple(i[0].shape)))
        for m in model.modules()
        if isinstance(m, torch.nn.BatchNorm2d)
    ]
    with torch.no_grad():
        model(torch.randn(batch, 1, 28, 28))
    for h in hooks:
        h.remove()
    return shapes


class Layer:
    """One BN and its quantizer, ready (calibrated, learned parameters set) and training."""

    def __init__(self, shape: tuple[int, ...], kind: str, gen: torch.Generator) -> None:
        spec, ste, self.clamp = KINDS[kind]
        self.x = (torch.randn(shape, generator=gen) * 2 + 0.5).requires_grad_()
        self.dy = torch.randn(shape, generator=gen)
        self.bn = torch.nn.BatchNorm2d(shape[1]).train()
        self.fq = FakeQuant(spec, ste, "act")
        self.fq.calibrating = True
        with torch.no_grad():
            self.fq(self.bn(self.x), None, self.clamp)
        self.fq.calibrating = False
        self.fq.init_learned()

    def apart(self) -> None:
        self.fq(self.bn(self.x), None, self.clamp).backward(self.dy)

    def fused(self) -> None:
        y = self.fq.after_batch_norm(self.x, self.bn, self.clamp)
        if y is None:
            raise SystemExit(f"the fused call declined {tuple(self.x.shape)} ({self.fq.ste})")
        y.backward(self.dy)

    def bn_alone(self) -> None:
        self.bn(self.x).backward(self.dy)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common(ap, repeats=15)
    ap.add_argument("--batch", type=int, default=128)
    a = ap.parse_args()
    start(a)
    shapes = bn_input_shapes(a.batch)
    values = sum(torch.Size(s).numel() for s in shapes)
    load = [load_average()]
    rows: dict[str, dict[str, float]] = {}
    for kind in KINDS:
        layers = [Layer(s, kind, torch.Generator().manual_seed(i)) for i, s in enumerate(shapes)]
        fns = {
            "apart": lambda: [m.apart() for m in layers],
            "fused": lambda: [m.fused() for m in layers],
            "bn_alone": lambda: [m.bn_alone() for m in layers],
            "copy": lambda: [m.x.detach().clone() for m in layers],
        }
        ms = {k: statistics.median(v) * 1e3 for k, v in interleaved_samples(fns, a.repeats, 2, a.clock).items()}
        rows[kind] = {**{f"{k}_ms": round(v, 2) for k, v in ms.items()}, "fused_vs_apart": round(ms["fused"] / ms["apart"], 3),
                      "fused_vs_bn_alone": round(ms["fused"] / ms["bn_alone"], 3)}  # fmt: skip
    load.append(load_average())
    print(
        f"{len(shapes)} BN inputs, {values / 1e6:.2f} M values (batch {a.batch}); forward + backward, {a.clock} clock, "
        f"{torch.get_num_threads()} thread(s), median of {a.repeats} interleaved runs; load average (1 min) before / after {load[0]} / {load[1]}"
    )
    print(f"{'quantizer':10} {'apart ms':>9} {'fused ms':>9} {'BN alone ms':>12} {'copy ms':>8} {'fused/apart':>12} {'fused/BN alone':>15}")
    for kind, r in rows.items():
        print(
            f"{kind:10} {r['apart_ms']:>9} {r['fused_ms']:>9} {r['bn_alone_ms']:>12} {r['copy_ms']:>8} "
            f"{r['fused_vs_apart']:>12} {r['fused_vs_bn_alone']:>15}"
        )
    if a.json:
        write_json(a.json, {"machine": machine(), "clock": a.clock, "batch": a.batch, "load_average_1min": load, "rows": rows})


if __name__ == "__main__":
    main()
