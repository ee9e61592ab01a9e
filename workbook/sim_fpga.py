"""`workbook sim fpga`: a FINN-style dataflow accelerator for a SCALE-Sim topology or a
trained trial's IntModel (every op a row: MVAUs and FINN's other streaming units).

    workbook sim fpga (--topology FILE.csv | --model intmodel.pt) --device NAME [--folding F.json | --target-fps N] [--format json|csv]

Without ``--folding`` or ``--target-fps`` the folding search picks the fastest design
that fits the device. Prints one record per layer (``layer, pe, simd, cycles,
swu_cycles, lut, dsp, bram18, acc_bits, ...``) then the totals (``fps,
latency_cycles, fits, ...``): as JSON, one object ``{"layers": [...], "totals": {...}}``;
as CSV, the layer table, a blank line, and a one-row totals table.
"""

from __future__ import annotations

import argparse
import json
import math
import sys

# Kept in step with qatlab.hw.fpga.devices (a test checks): naming them here keeps
# `workbook --help` from importing the model (numpy) just to list them.
MIN_FPS, MAX_FPS = 1e-3, 1e12
MAX_CLOCK_MHZ = 1e5

DEVICE_NAMES = ("PYNQ-Z1", "Ultra96-V2", "ZCU104", "ZCU102", "U250")


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare this command's options (kept import-light: no torch, no numpy here)."""
    p.description = (
        "Estimate a FINN-style streaming dataflow accelerator (per layer a PE x SIMD matrix-vector unit "
        "fed by a sliding-window unit) for a SCALE-Sim topology: cycles, resources, accumulator widths, "
        "throughput, latency, FIFO depths and whether it fits the device. A trained trial's integer model "
        "(--model) maps every op: convs and linears as MVAUs, the rest as FINN's streaming units."
    )
    from workbook.sim_asic import add_workload_arguments

    add_workload_arguments(p)
    p.add_argument("--device", required=True, metavar="NAME", help=f"target device: {', '.join(DEVICE_NAMES)}")
    fold = p.add_mutually_exclusive_group()
    fold.add_argument(
        "--folding", metavar="F.json", default=None, help="FINN-style folding config: one object per layer name with PE and SIMD"
    )
    fold.add_argument(
        "--target-fps", type=float, default=None, metavar="N", help="search the cheapest folding reaching N frames per second"
    )
    fold.add_argument(
        "--fastest", action="store_true", help="search the fastest folding that fits (the default without --folding/--target-fps)"
    )
    p.add_argument("--format", choices=["json", "csv"], default="csv", help="output format (default: csv)")
    p.add_argument("--clock-mhz", type=float, default=None, metavar="F", help="clock (default: the device's)")
    p.add_argument("--w-bits", type=int, default=None, metavar="B", help="weight bits of every topology layer (default: 8)")
    p.add_argument("--a-bits", type=int, default=None, metavar="B", help="activation bits of every topology layer (default: 8)")
    p.add_argument("--signed-input", action="store_true", help="the first topology layer's input codes are signed")
    p.add_argument(
        "--acc-bits",
        type=int,
        default=None,
        metavar="B",
        help="implement B-bit accumulators (default: the worst-case width each layer needs)",
    )
    p.add_argument("--res-type", choices=["auto", "lut", "dsp"], default="auto", help="multipliers: FINN's choice (auto), LUTs or DSPs")
    p.add_argument(
        "--ram-style",
        choices=["auto", "block", "distributed", "ultra"],
        default="auto",
        help="weight memories (auto: FINN's default, BRAM at any depth; with --cost-model qatlab LUTRAM up to 128 words and the search may pick any)",
    )
    p.add_argument(
        "--cost-model",
        choices=["finn", "qatlab"],
        default="finn",
        help="finn: FINN's own estimates of its default build (default); qatlab: also the memories and comparators FINN leaves uncounted, standalone thresholds, the HLS sliding window (docs/fpga-finn.md)",
    )
    p.add_argument(
        "--max-util",
        type=float,
        default=None,
        metavar="F",
        help="search: use at most this fraction of every resource (default: FINN's limits, LUT 0.7, BRAM/URAM/DSP 0.8)",
    )
    p.add_argument(
        "--no-schedule", action="store_true", help="skip latency and FIFO depths (their cost grows with the network's stream length)"
    )
    p.add_argument("--save-folding", metavar="F.json", default=None, help="write the folding used as FINN-style JSON")


def _finite(v: object) -> object:
    return None if isinstance(v, float) and not math.isfinite(v) else v


def run(args: argparse.Namespace) -> int:
    from dataclasses import replace

    from qatlab.hw import fpga
    from qatlab.hw.limits import LimitError
    from qatlab.hw.opgraph import UnsupportedOpError
    from qatlab.hw.workload import TopologyError, read_topology
    from workbook.errors import CommandError
    from workbook.sim_asic import load_intmodel, reject_with_model

    reject_with_model(
        args, {"--w-bits": args.w_bits, "--a-bits": args.a_bits, "--signed-input": args.signed_input, "--acc-bits": args.acc_bits}
    )

    for flag, v in (("--w-bits", args.w_bits), ("--a-bits", args.a_bits)):
        if v is not None and not 1 <= v <= 32:
            raise CommandError(f"{flag} must be between 1 and 32, got {v}")
    if args.acc_bits is not None and not 2 <= args.acc_bits <= 64:
        raise CommandError(f"--acc-bits must be between 2 and 64, got {args.acc_bits}")
    if args.max_util is not None and not 0 < args.max_util <= 1:
        raise CommandError(f"--max-util must be in (0, 1], got {args.max_util}")
    # Bounds that keep cycles-per-frame budgets finite integers (a fps of 1e-300 overflows them).
    if args.target_fps is not None and not MIN_FPS <= args.target_fps <= MAX_FPS:
        raise CommandError(f"--target-fps must be between {MIN_FPS:g} and {MAX_FPS:g} frames per second, got {args.target_fps}")
    if args.clock_mhz is not None and not 0 < args.clock_mhz <= MAX_CLOCK_MHZ:
        raise CommandError(f"--clock-mhz must be in (0, {MAX_CLOCK_MHZ:g}], got {args.clock_mhz}")
    if args.folding:
        from qatlab.hw.limits import InputFileError, read_text

        try:
            read_text(args.folding, "folding")  # size and encoding, before the JSON parser sees it
        except InputFileError as e:
            raise CommandError(str(e)) from None
    if args.save_folding:
        from workbook.sim_asic import check_out_path

        check_out_path(args.save_folding)
    common = {
        "folding": args.folding, "target_fps": args.target_fps, "clock_mhz": args.clock_mhz, "res_type": args.res_type,
        "ram_style": args.ram_style, "limits": args.max_util, "schedule": not args.no_schedule,
        "cost_model": args.cost_model,
    }  # fmt: skip
    try:
        if args.model:
            rep = fpga.analyze_intmodel(load_intmodel(args.model), args.device, **common)
        else:
            layers = read_topology(args.topology)
            if args.w_bits is not None or args.a_bits is not None:
                layers = [replace(lay, w_bits=args.w_bits or lay.w_bits, a_bits=args.a_bits or lay.a_bits) for lay in layers]
            rep = fpga.analyze(layers, args.device, signed_input=args.signed_input, acc_bits=args.acc_bits, **common)
        if args.save_folding:
            fpga.write_folding(rep.folding, args.save_folding)
    except (TopologyError, fpga.FpgaError, LimitError) as e:
        raise CommandError(str(e)) from None
    except UnsupportedOpError as e:
        raise CommandError(f"{args.model}: {e}") from None
    except OSError as e:
        raise CommandError(f"{e.strerror or e}", args.save_folding or e.filename) from None
    if args.format == "json":
        d = rep.to_dict()
        d["layers"] = [{k: _finite(v) for k, v in r.items()} for r in d["layers"]]
        d["totals"] = {k: _finite(v) for k, v in d["totals"].items()}
        print(json.dumps(d, indent=1))
    else:
        sys.stdout.write(rep.to_csv())
    if not rep.fits:
        print(f"workbook: note: the design does not fit {rep.device.name}: {rep.totals['explanation']}", file=sys.stderr)
    return 0
