"""fake_quantize forward+backward vs torch's native fused op (ratio in the same run).

    python benchmarks/fakequant.py [--size 4096] [--repeats 15] [--json FILE]
    workbook bench fakequant [--json FILE]

Prints one JSON line with the machine, then one per case. ``--json`` also writes
``{"target": "fakequant", "machine": ..., "rows": [...]}``.
"""

from __future__ import annotations

import argparse
import json

import torch

from qatlab.atomic import write_json
from qatlab.nn.fused import fake_quant_fused, fusable
from qatlab.quant import QuantSpec, compute_qparams, fake_quantize
from qatlab.timing import interleaved, machine


def fakequant(size: int = 4096, repeats: int = 15) -> list[dict[str, object]]:
    """Forward+backward of our ``fake_quantize`` vs torch's native fused op.

    Three timings per case: ``native`` (torch op, qparams given), ``ours_fixed``
    (our API, same qparams given: validation + dispatch overhead) and ``ours``
    (our API estimating the range with minmax each call, as a QAT step does); and
    ``fused``, the CPU kernel QAT's quantizers run (``qatlab.nn.fused``, same qparams,
    clipped STE) where it is available (None otherwise).
    """
    torch.manual_seed(0)
    x = torch.randn(size, size, requires_grad=True)
    grad = torch.randn(size, size)
    rows: list[dict[str, object]] = []
    for gran in ("tensor", "channel"):
        for bits in (8, 4):
            spec = QuantSpec(bits=bits, granularity=gran)
            qp = compute_qparams(x.detach(), spec)

            def native() -> None:
                if gran == "tensor":
                    y = torch.fake_quantize_per_tensor_affine(x, qp.scale, qp.zero_point, qp.qmin, qp.qmax)
                else:
                    y = torch.fake_quantize_per_channel_affine(x, qp.scale, qp.zero_point, 0, qp.qmin, qp.qmax)
                y.backward(grad)
                x.grad = None

            def ours_fixed() -> None:
                fake_quantize(x, spec, qp).backward(grad)
                x.grad = None

            def ours() -> None:
                fake_quantize(x, spec).backward(grad)
                x.grad = None

            def fused_step() -> None:
                axis = None if gran == "tensor" else 0
                fake_quant_fused(x, qp.scale, qp.zero_point.float(), qp.qmin, qp.qmax, axis).backward(grad)
                x.grad = None

            cases = {"native": native, "ours_fixed": ours_fixed, "ours": ours}
            if fusable(x, qp.scale):
                cases["fused"] = fused_step
            t = interleaved(cases, repeats=repeats)
            fused_s = t.get("fused")
            rows.append(
                {
                    "granularity": gran,
                    "bits": bits,
                    "shape": f"{size}x{size}",
                    "native_ms": round(t["native"] * 1e3, 2),
                    "ours_fixed_ms": round(t["ours_fixed"] * 1e3, 2),
                    "ours_ms": round(t["ours"] * 1e3, 2),
                    "ratio_fixed": round(t["ours_fixed"] / t["native"], 3),
                    "ratio": round(t["ours"] / t["native"], 3),
                    "fused_ms": None if fused_s is None else round(fused_s * 1e3, 2),
                    "ratio_fused": None if fused_s is None else round(fused_s / t["native"], 3),
                }
            )
    return rows


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=15)
    ap.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    a = ap.parse_args()
    if a.size < 1 or a.repeats < 1:
        ap.error("--size and --repeats must be positive")
    print(json.dumps({"machine": machine()}))
    rows = fakequant(a.size, a.repeats)
    for row in rows:
        print(json.dumps(row))
    if a.json:
        write_json(a.json, {"target": "fakequant", "machine": machine(), "rows": rows})
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
