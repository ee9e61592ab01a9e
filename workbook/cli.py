"""``workbook``: a thin CLI. Each command parses its arguments and calls one function."""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

# Re-exported: callers written against `workbook.cli` keep working; the commands
# themselves import these from their own modules, so nothing here imports back.
from workbook.argtypes import int_at_least  # noqa: F401
from workbook.errors import EXIT_FAILED, EXIT_INTERRUPTED, CommandError, one_line


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    # `command` given: only that command's module declares its options, so a command
    # does not pay at start-up for importing every other one (all are listed either way).
    def wanted(name: str) -> bool:
        return command is None or command == name

    p = argparse.ArgumentParser(prog="workbook", description="qatlab experiment workbench")
    p.add_argument("--debug", action="store_true", help="show the Python traceback of an error")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    run = sub.add_parser("run", help="the main job: sweep, notebooks, HTML reports")
    if wanted("run"):
        _module("workbook.main_job").add_arguments(run)
    run.set_defaults(fn=_cmd("workbook.main_job", "run"))

    bench = sub.add_parser("bench", help="run a benchmark and print its figures")
    bench.add_argument("target", choices=["fakequant", "kernels", "sim"])
    bench.add_argument("--json", default=None, metavar="FILE", help="also write the figures as JSON")
    bench.set_defaults(fn=_cmd("workbook.bench", "run"))

    sweep = sub.add_parser("sweep", help="run an experiment spec on Ray (local by default, a cluster by --address)")
    if wanted("sweep"):
        _module("workbook.sweep").add_arguments(sweep)
    sweep.set_defaults(fn=_cmd("workbook.sweep", "run"))

    report = sub.add_parser("report", help="(re)build HTML reports and the index without re-running")
    if wanted("report"):
        _module("workbook.report").add_arguments(report)
    report.set_defaults(fn=_cmd("workbook.report", "run"))

    sim = sub.add_parser("sim", help="hardware simulators (asic: systolic array, fpga: dataflow)")
    sim_sub = sim.add_subparsers(dest="target", required=True, metavar="TARGET")
    for target, helptext in (("asic", "TPU-style systolic array, SCALE-Sim compatible"), ("fpga", "FINN-style dataflow accelerator")):
        sp = sim_sub.add_parser(target, help=helptext)
        if wanted("sim"):
            _sim_module(target).add_arguments(sp)
        sp.set_defaults(fn=_cmd(f"workbook.sim_{target}", "run"))

    export = sub.add_parser("export", help="export a trained model (ONNX QDQ)")
    export_sub = export.add_subparsers(dest="format", required=True, metavar="FORMAT")
    onnx_p = export_sub.add_parser("onnx", help="ONNX with QuantizeLinear/DequantizeLinear, checked by ONNX Runtime")
    if wanted("export"):
        _module("workbook.export_onnx").add_arguments(onnx_p)
    onnx_p.set_defaults(fn=_cmd("workbook.export_onnx", "run"))
    return p


def _module(name: str):
    # Command modules declare their own options; they import torch/Ray only inside run().
    import importlib

    return importlib.import_module(name)


def _sim_module(target: str):
    return _module(f"workbook.sim_{target}")


def _cmd(module: str, name: str) -> Callable[[argparse.Namespace], int]:
    # Import lazily: `workbook --help` must not pay for torch and Ray.
    def run(args: argparse.Namespace) -> int:
        import importlib

        return int(getattr(importlib.import_module(module), name)(args) or 0)

    return run


def main(argv: Sequence[str] | None = None) -> int:
    words = [a for a in (sys.argv[1:] if argv is None else argv) if not a.startswith("-")]
    args = build_parser(words[0] if words else None).parse_args(argv)
    try:
        return args.fn(args)
    except CommandError as e:
        if args.debug:
            _print_traceback()
        print(f"workbook: error: {e}", file=sys.stderr)
        return e.code
    except KeyboardInterrupt:
        if args.debug:
            _print_traceback()
        print("workbook: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as e:  # the last net: one line, never a traceback unless asked for
        if args.debug:
            _print_traceback()
        print(f"workbook: error: {type(e).__name__}: {one_line(e)}: rerun with --debug for the traceback", file=sys.stderr)
        return EXIT_FAILED


def _print_traceback() -> None:
    import traceback  # only for --debug: start-up does not pay for it

    traceback.print_exc()


if __name__ == "__main__":
    sys.exit(main())
