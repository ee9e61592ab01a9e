"""`workbook sim asic`: run a SCALE-Sim topology, or a trained trial's IntModel, on a
SCALE-Sim config; print one record per layer (per op for an IntModel).

    workbook sim asic --config scale.cfg (--topology net.csv | --model intmodel.pt) [--format json|csv] [options]

JSON prints ``{"layers": [...], "totals": {...}}``; CSV prints a header, one row per
layer and a ``TOTAL`` row. Field meanings: :mod:`qatlab.hw.asic.simulate`.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from workbook.argtypes import int_at_least

_pos_int = int_at_least(0)


def _pos_float(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (v > 0 and v != float("inf")):
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {v}")
    return v


def _bits(text: str) -> int:
    v = _pos_int(text)
    if not 2 <= v <= 16:
        raise argparse.ArgumentTypeError(f"bits must be 2..16, got {v}")
    return v


def add_workload_arguments(p: argparse.ArgumentParser) -> None:
    """``--topology`` or ``--model``, exactly one (shared with `workbook sim fpga`)."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--topology", metavar="FILE.csv", help="SCALE-Sim topology (conv or 'Layer, M, N, K' GEMM form)")
    src.add_argument(
        "--model",
        metavar="PATH",
        help="a trained trial's intmodel.pt, or its model.pt (a ptq/qat checkpoint, converted with the trial's rounding)",
    )


def load_intmodel(path: str) -> Any:
    """The IntModel of a trial's ``intmodel.pt`` or ``model.pt`` (CommandError if unusable)."""
    from workbook.trialfiles import load_trial_model

    return load_trial_model(path, file_word="model")[0]


def reject_with_model(args: argparse.Namespace, flags: dict[str, object]) -> None:
    """Options that describe a topology's layers make no sense for an IntModel, which carries its own."""
    from workbook.errors import CommandError

    given = [flag for flag, v in flags.items() if v not in (None, False)]
    if args.model and given:
        verb = "applies" if len(given) == 1 else "apply"
        raise CommandError(f"{', '.join(given)} {verb} to --topology only: an IntModel (--model) carries its own bit widths and signs")


def check_out_path(path: str) -> None:
    """Refuse an output path that cannot be written before any work is done (CommandError)."""
    import os

    from workbook.errors import CommandError

    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise CommandError("is a folder", path, "give a file name")
    if not os.path.isdir(folder):
        raise CommandError("no such folder", folder, "create it first or write elsewhere")
    if not os.access(folder, os.W_OK):
        raise CommandError("folder is not writable", folder)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Declare this command's options (kept import-light: no torch, no numpy here)."""
    p.description = (
        "Simulate a TPU-style systolic array on a SCALE-Sim topology or a trained trial's integer model. Reads "
        "SCALE-Sim 3.0.0 .cfg and topology .csv files (conv and GEMM forms); cycle, utilization and SRAM figures "
        "equal SCALE-Sim's."
    )
    p.add_argument("--config", required=True, metavar="FILE.cfg", help="SCALE-Sim configuration file")
    add_workload_arguments(p)
    p.add_argument("--format", choices=["json", "csv"], default="json", help="output format (default: json)")
    p.add_argument("--out", metavar="FILE", default=None, help="write to FILE (atomically) instead of stdout")
    p.add_argument("--dataflow", choices=["os", "ws", "is"], default=None, help="override the config's dataflow")
    p.add_argument("--freq-mhz", type=_pos_float, default=None, help="clock for latency_s (default 1000 or [qatlab] freq_mhz)")
    p.add_argument("--w-bits", type=_bits, default=None, help="weight bits of every topology layer (default 8)")
    p.add_argument("--a-bits", type=_bits, default=None, help="activation bits of every topology layer (default 8)")
    p.add_argument(
        "--pack",
        type=_pos_int,
        default=None,
        help="MACs per cell per cycle for sub-8-bit operands: 1 = off (SCALE-Sim), 0 = auto (8 // bits, capped by --pack-max)",
    )
    p.add_argument("--pack-max", type=_pos_int, default=None, help="cap for --pack 0 (default 4)")
    p.add_argument(
        "--dram",
        choices=["fast", "exact"],
        default=None,
        help="DRAM counts, SCALE-Sim's exactly either way: fast = closed forms, SCALE-Sim's buffers "
        "replayed only where none exists; exact = replay wherever a count is not trivial (the reference, slower)",
    )
    p.add_argument("--sparsity", action="store_true", help="skip zero weights of N:M-sparse layers (topology's N:M column)")
    p.add_argument("--node-nm", type=_pos_float, default=None, help="technology node for energy (default 45: Horowitz' table)")
    p.add_argument("--vdd", type=_pos_float, default=None, help="supply voltage for energy scaling (default 0.9)")


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from qatlab.hw.asic import ArrayConfig, ConfigError, simulate
    from qatlab.hw.limits import LimitError
    from qatlab.hw.opgraph import UnsupportedOpError
    from qatlab.hw.workload import TopologyError, read_topology
    from workbook.errors import CommandError

    reject_with_model(args, {"--w-bits": args.w_bits, "--a-bits": args.a_bits})
    if args.out:
        check_out_path(args.out)

    overrides = {
        k: v
        for k, v in {
            "dataflow": args.dataflow,
            "freq_mhz": args.freq_mhz,
            "pack": args.pack,
            "pack_max": args.pack_max,
            "dram_model": args.dram,
            "node_nm": args.node_nm,
            "vdd": args.vdd,
        }.items()
        if v is not None
    }
    if args.sparsity:
        overrides["sparsity"] = True
    try:
        cfg = ArrayConfig.from_cfg(args.config, **overrides)
        if args.model:
            from qatlab.hw.asic import simulate_intmodel  # the IntModel path only when asked for

            report = simulate_intmodel(load_intmodel(args.model), cfg)
        else:
            layers = read_topology(args.topology)
            if args.w_bits or args.a_bits:
                layers = [dataclasses.replace(lay, w_bits=args.w_bits or lay.w_bits, a_bits=args.a_bits or lay.a_bits) for lay in layers]
            report = simulate(layers, cfg)
    except (ConfigError, TopologyError, LimitError) as e:
        raise CommandError(str(e)) from None
    except UnsupportedOpError as e:
        raise CommandError(f"{args.model}: {e}") from None
    text = report.to_json() + "\n" if args.format == "json" else report.to_csv()
    if args.out:
        from qatlab.atomic import write_text  # tempfile and shutil only when a file is written

        try:
            write_text(args.out, text, mkdir=False)
        except OSError as e:
            raise CommandError(f"cannot write the report: {e.strerror or e}", args.out) from None
    else:
        sys.stdout.write(text)
    return 0
