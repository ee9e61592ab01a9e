"""Export errors: one base class, so callers (the CLI) can turn them into one-line messages."""

from __future__ import annotations

from qatlab.nn import UnsupportedLayerError as _NnUnsupported


class ExportError(ValueError):
    """The model cannot be written as ONNX (bad options, a failed check, an unwritable path)."""


class UnsupportedLayerError(ExportError, _NnUnsupported):
    """A layer the QDQ graph cannot express; the message names the layer and its type.

    Also a ``qatlab.nn.UnsupportedLayerError``, so code that already catches the
    integer model's error catches this one too.
    """
