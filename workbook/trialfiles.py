"""A trial's saved model, for the commands that read one (``export onnx``, ``sim asic|fpga --model``)."""

from __future__ import annotations

import os
from typing import Any

from workbook.errors import CommandError, one_line


def load_trial_model(path: str, *, file_word: str = "model") -> tuple[Any, Any, Any]:
    """(IntModel, fake-quant model or None, TrainConfig or None) from a trial's file.

    ``path`` is an ``intmodel.pt``, or a ptq/qat trial's ``model.pt`` converted here as
    the trial converted it. An unusable file is a CommandError naming it; ``file_word``
    is how the command calls the file it asked for ("no such <file_word> file").
    """
    import torch

    from qatlab.intmodel import FORMAT, IntModel, IntModelFormatError, convert
    from qatlab.nn import UnsupportedLayerError
    from qatlab.train import CheckpointError, load_checkpoint

    if os.path.isdir(path):
        raise CommandError(f"{path}: is a folder; give a trial's intmodel.pt or model.pt")
    if not os.path.exists(path):
        raise CommandError(f"{path}: no such {file_word} file")
    if not os.path.isfile(path):
        raise CommandError(f"{path}: not a regular file; give a trial's intmodel.pt or model.pt")
    with open(path, "rb") as f:
        head = f.read(4)
    # torch.save writes a zip archive (or, before torch 1.6, a pickle): anything else is
    # named here, not by torch's weights-only unpickler advice, which does not apply.
    if not (head.startswith(b"PK\x03\x04") or head[:1] == b"\x80"):
        what = "an empty file" if not head else "not a torch file"
        raise CommandError(f"{path}: cannot read checkpoint: {what}; give a trial's intmodel.pt or model.pt")
    try:
        raw = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:
        raw = None  # load_checkpoint below names the damage in its own words
    if isinstance(raw, dict) and raw.get("format") == FORMAT:
        try:
            return IntModel.from_dict(raw, path), None, None
        except IntModelFormatError as e:
            raise CommandError(one_line(e)) from e
    try:
        model, cfg, input_shape = load_checkpoint(path)
    except CheckpointError as e:
        raise CommandError(one_line(e)) from e
    if cfg.method == "fp32":
        raise CommandError(f"{path}: an fp32 checkpoint has no integer model; give a ptq or qat trial's model.pt")
    try:
        im = convert(model, input_shape, cfg.rounding, meta={"config": cfg.to_dict()})
    except UnsupportedLayerError as e:
        raise CommandError(f"{path}: cannot convert to an integer model: {one_line(e)}") from e
    return im, model, cfg
