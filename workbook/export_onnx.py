"""`workbook export onnx CHECKPOINT OUT.onnx`: the trained model as ONNX QDQ, checked by ONNX Runtime.

CHECKPOINT is a trial's ``model.pt`` (a ptq/qat checkpoint: converted to its integer
model here, with the trial's rounding) or its ``intmodel.pt``. ``--check`` runs the
exported file in ONNX Runtime on the test set of the trial's dataset and prints its
accuracy beside the IntModel's and the fake-quant model's.

Heavy imports (torch, onnx) happen inside ``run``: ``workbook --help`` stays fast.
"""

from __future__ import annotations

import argparse
import sys
from typing import Any

from qatlab.atomic import write_json
from workbook.errors import CommandError, one_line
from workbook.trialfiles import load_trial_model


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("checkpoint", help="a trained model.pt (ptq/qat trial) or its intmodel.pt")
    p.add_argument("out", help="the .onnx file to write (atomically; nothing is left on failure)")
    p.add_argument(
        "--opset", type=int, default=None, help="ONNX opset (default: the oldest that holds the model: 13, or 21 for 4/16-bit types)"
    )
    p.add_argument(
        "--low-bit",
        choices=["clip", "int4"],
        default="clip",
        help="sub-8-bit form: 'clip' = 8-bit Q/DQ + integer Clip(qmin, qmax) (default; ONNX Runtime runs it in "
        "integer kernels), 'int4' = INT4/UINT4 types of opset 21 where a range is exactly 4-bit (ORT runs those in float)",
    )
    p.add_argument("--check", action="store_true", help="run ONNX Runtime on the test set and compare with the IntModel")
    p.add_argument("--dataset", default=None, help="dataset for --check (default: the trial's)")
    p.add_argument("--limit", type=int, default=None, metavar="N", help="--check on the first N test images only")
    p.add_argument(
        "--optimization", choices=["all", "extended", "basic", "disable"], default="all", help="ORT graph optimization level for --check"
    )
    p.add_argument(
        "--per-layer",
        action="store_true",
        help="with --check: codes mismatch of every layer (keeps every layer's codes in memory: pair with --limit)",
    )
    p.add_argument("--json", default=None, metavar="FILE", help="with --check: also write the figures as JSON")


def run(args: argparse.Namespace) -> int:
    if not str(args.out).endswith(".onnx"):
        raise CommandError(f"{args.out}: the output file should end in .onnx")
    if args.limit is not None and args.limit < 1:
        raise CommandError(f"--limit must be a positive integer, got {args.limit}")
    if not args.check:
        given = [
            flag
            for flag, v in (("--dataset", args.dataset), ("--limit", args.limit), ("--per-layer", args.per_layer), ("--json", args.json))
            if v
        ]
        if given:
            raise CommandError(f"{', '.join(given)} only apply with --check", fix="add --check or drop them")
    _check_writable(args.out, "the .onnx file")
    if args.json:
        _check_writable(args.json, "--json")
    im, fq_model, cfg = load_trial_model(args.checkpoint, file_word="checkpoint")

    from qatlab.atomic import atomic_path
    from qatlab.export import ExportError, compare_onnx, export_onnx

    # Everything that can fail happens before the .onnx appears: the test set is loaded
    # first, and the file is checked at a temp name that only becomes OUT once it passed.
    xy = _test_set(args, im, cfg) if args.check else None
    cmp = None
    try:
        with atomic_path(args.out, mkdir=False) as tmp:
            info = export_onnx(im, tmp, opset=args.opset, low_bit=args.low_bit)
            if xy is not None:
                cmp = compare_onnx(im, tmp, *xy, fake_quant=fq_model, optimization=args.optimization, per_layer=args.per_layer)
                if args.json:
                    record = {
                        "onnx": str(args.out),
                        "opset": info.opset,
                        "low_bit": info.low_bit,
                        "rounding": info.rounding,
                        **cmp.to_dict(),
                    }
                    write_json(args.json, record, indent=2, mkdir=False)
    except ExportError as e:
        raise CommandError(one_line(e)) from e
    except OSError as e:
        raise CommandError(f"cannot write: {e.strerror or e}", e.filename or args.out) from e
    nodes = ", ".join(f"{k} {v}" for k, v in sorted(info.nodes.items()))
    codes = ", ".join(f"{k} {v}" for k, v in sorted(info.code_types.items()))
    print(f"wrote {args.out} ({info.size_bytes} bytes, opset {info.opset}, low-bit form {info.low_bit}, IntModel rounding {info.rounding})")
    print(f"  nodes: {nodes}")
    print(f"  code types: {codes}; integer clips: {info.clips}")
    if cmp is not None:
        print(cmp.summary())
    sys.stdout.flush()
    return 0


def _check_writable(path: str, what: str) -> None:
    """CommandError now, before any work, for an output path that cannot be written."""
    import os

    folder = os.path.dirname(path) or "."
    if os.path.isdir(path):
        raise CommandError(f"{what} is a folder", path, "give a file name")
    if not os.path.isdir(folder):
        raise CommandError(f"no such folder for {what}", folder, "create it first or write elsewhere")


def _test_set(args: argparse.Namespace, im: Any, cfg: Any) -> tuple[Any, Any]:
    """The test split, normalised exactly as the trial's training saw it."""
    from qatlab.config import TrainConfig
    from qatlab.data import load_dataset

    if cfg is None and isinstance(im.meta.get("config"), dict):
        try:
            cfg = TrainConfig.from_dict(im.meta["config"])
        except Exception:
            cfg = None
    name = args.dataset or (cfg.dataset if cfg is not None else None)
    if name is None:
        raise CommandError("--check needs --dataset: the IntModel file does not record its trial's dataset")
    kw: dict[str, Any] = {}
    if cfg is not None and name == cfg.dataset:
        # Same split parameters as the trial: the normalisation statistics come from its train split.
        kw = {"val_fraction": cfg.val_fraction, "limit_train": cfg.limit_train, "seed": cfg.seed, "loader_args": cfg.loader_args or None}
    from qatlab.datasets.errors import DatasetError

    try:
        splits = load_dataset(name, limit_test=args.limit, **kw)
    except (ValueError, OSError, DatasetError) as e:
        raise CommandError(f"dataset {name!r}: {one_line(e)}") from e
    if tuple(splits.input_shape) != tuple(im.input_shape):
        raise CommandError(f"dataset {name!r} has inputs {splits.input_shape}; the model takes {tuple(im.input_shape)}")
    return splits.test_tensors()
