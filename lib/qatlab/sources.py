"""What a model or dataset string names: a zoo/built-in name, an import path, or a file path.

Apart from ``qatlab.config`` so that the dataset readers can tell the kinds apart
without importing the config (which itself asks them to check their options).
"""

from __future__ import annotations

import os
import re

BUILTIN_DATASETS = ("fashion-mnist", "digits")
# package.module:attribute (the attribute may be dotted: module:Class.factory)
IMPORT_PATH_RE = re.compile(r"^[A-Za-z_]\w*(\.[A-Za-z_]\w*)*:[A-Za-z_]\w*(\.[A-Za-z_]\w*)*$")


def is_import_path(value: str) -> bool:
    """``package.module:attribute`` — a user model factory or dataset loader."""
    return bool(IMPORT_PATH_RE.match(value))


def dataset_kind(value: str) -> str:
    """``builtin`` | ``import`` | ``npz`` | ``folder`` | ``unknown`` for a dataset string.

    A path must look like one (contain a ``/`` or end in ``.npz``), so that a typo in a
    built-in name is an error rather than a folder that does not exist.
    """
    if value in BUILTIN_DATASETS:
        return "builtin"
    if is_import_path(value):
        return "import"
    if value.lower().endswith(".npz"):
        return "npz"
    if "/" in value or os.sep in value or value.startswith(("~", ".")):
        return "folder"
    return "unknown"


def model_kind(value: str) -> str:
    """``builtin`` | ``import`` | ``unknown`` for a model string."""
    from qatlab.models import MODELS

    if value in MODELS:
        return "builtin"
    return "import" if is_import_path(value) else "unknown"
