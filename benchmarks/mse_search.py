"""The ``mse`` range search: the fused one-pass kernel vs ``estimators.mse`` (ratios, same run).

    python benchmarks/mse_search.py [--threads 1] [--repeats 5] [--clock cpu|wall] [--json out.json]

Cases, each timed round-robin with the reference on the same tensors:

* ``act_1.6M``: a 128x64x14x14 activation (post-ReLU values), per tensor, 4- and 8-bit
  asymmetric: the calibration / refresh search of a mid-network activation quantizer;
* ``mobilenet_weights``: every weight of ``build_model("mobilenet")``, per output channel,
  4-bit symmetric (the ``*_mse`` recipes' weight spec), all layers in one timed call.

Each case first checks that both paths choose the same ranges (a difference within
float64 summation noise is reported, not hidden). ``--clock cpu`` (default) times by the
process's CPU time, so waiting for a core on a shared machine stays out of the figures.
"""

from __future__ import annotations

import argparse
import statistics
from typing import Callable

import torch
from fused_cli import add_common, start

from qatlab.atomic import write_json
from qatlab.models import build_model
from qatlab.nn.fake_quant import search_range
from qatlab.quant import QuantSpec, layout_for, to_rows
from qatlab.quant.estimators import mse
from qatlab.timing import load_average, machine, median_time

Rows = list[tuple[torch.Tensor, QuantSpec]]


def cases() -> dict[str, Rows]:
    g = torch.Generator().manual_seed(0)
    act = torch.randn(128, 64, 14, 14, generator=g).clamp(min=0)
    out: dict[str, Rows] = {}
    for bits in (4, 8):
        spec = QuantSpec(bits=bits, symmetric=False, estimator="mse")
        out[f"act_1.6M_{bits}bit"] = [(to_rows(act, layout_for(act, spec)), spec)]
    torch.manual_seed(0)
    model = build_model("mobilenet")
    w_spec = QuantSpec(bits=4, symmetric=True, granularity="channel", estimator="mse")
    weights = [p.detach() for p in model.parameters() if p.dim() > 1]
    out["mobilenet_weights_4bit"] = [(to_rows(w, layout_for(w, w_spec)).contiguous(), w_spec) for w in weights]
    return out


def run_all(
    fn: Callable[[torch.Tensor, QuantSpec], tuple[torch.Tensor, torch.Tensor]], rows: Rows
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return [fn(r, s) for r, s in rows]


def timed(fn: Callable[[], object], clock: str) -> float:
    return median_time(fn, 1, clock)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    add_common(ap, repeats=5)
    a = ap.parse_args()
    start(a)
    load = [load_average()]
    rows: dict[str, dict[str, object]] = {}
    for name, data in cases().items():
        ref, fast = run_all(mse, data), run_all(search_range, data)
        same = sum(int(torch.equal(a_lo, b_lo) and torch.equal(a_hi, b_hi)) for (a_lo, a_hi), (b_lo, b_hi) in zip(ref, fast))
        t_ref: list[float] = []
        t_fast: list[float] = []
        for _ in range(a.repeats):
            t_ref.append(timed(lambda: run_all(mse, data), a.clock))
            t_fast.append(timed(lambda: run_all(search_range, data), a.clock))
        r_ms, f_ms = statistics.median(t_ref) * 1e3, statistics.median(t_fast) * 1e3
        rows[name] = {
            "tensors": len(data),
            "values": sum(r.numel() for r, _ in data),
            "same_ranges": f"{same}/{len(data)}",
            "reference_ms": round(r_ms, 2),
            "fused_ms": round(f_ms, 2),
            "speedup": round(r_ms / f_ms, 1),
        }
    load.append(load_average())
    print(
        f"{a.clock} clock, {torch.get_num_threads()} thread(s), median of {a.repeats} interleaved runs; load average (1 min) before / after {load[0]} / {load[1]}"
    )
    print(f"{'case':26} {'tensors':>7} {'values':>9} {'same':>7} {'reference ms':>13} {'fused ms':>9} {'speedup':>8}")
    for name, r in rows.items():
        print(
            f"{name:26} {r['tensors']:>7} {r['values']:>9} {r['same_ranges']:>7} {r['reference_ms']:>13} {r['fused_ms']:>9} {r['speedup']:>7}x"
        )
    if a.json:
        write_json(a.json, {"machine": machine(), "clock": a.clock, "load_average_1min": load, "rows": rows})


if __name__ == "__main__":
    main()
