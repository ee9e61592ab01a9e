"""A dataset as one ``.npz`` file of arrays, held in memory.

Keys (``numpy.savez``):

- ``x_train``, ``x_test``: images ``[N, H, W]`` (one channel) or ``[N, C, H, W]``
  (channels first), the same per-image shape in both; ``uint8`` pixels are scaled
  by 1/255, float pixels taken as they are;
- ``y_train``, ``y_test``: integer labels ``[N]`` in ``0 .. num_classes-1``;
- ``num_classes`` (optional, a scalar): else the largest train label + 1.

Normalised like the built-in datasets: one mean and std over the train part's pixels.
"""

from __future__ import annotations

import os
import zipfile
from pathlib import Path

import numpy as np

from qatlab.datasets.errors import DatasetError
from qatlab.datasets.splits import DataSplits, in_memory_splits

KEYS = ("x_train", "y_train", "x_test", "y_test")


def read_npz(path: str | os.PathLike[str]) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """(x_train, y_train, x_test, y_test, num_classes), checked; images as ``[N, C, H, W]``."""
    p = Path(path).expanduser()
    if not p.is_file():
        raise DatasetError(f"{p}: no such .npz file")
    try:
        with np.load(p, allow_pickle=False) as z:
            missing = [k for k in KEYS if k not in z.files]
            if missing:
                raise DatasetError(
                    f"{p}: missing array(s) {', '.join(missing)}; a dataset .npz holds {', '.join(KEYS)} (and optionally num_classes)"
                )
            xtr, ytr, xte, yte = (z[k] for k in KEYS)
            given = z["num_classes"] if "num_classes" in z.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise DatasetError(f"{p}: not a readable .npz file ({type(e).__name__}: {e})") from e
    shapes = []
    for name, x in (("x_train", xtr), ("x_test", xte)):
        if x.ndim not in (3, 4):
            raise DatasetError(f"{p}: {name} has shape {x.shape}; expected [N, H, W] or [N, C, H, W]")
        if x.dtype == np.bool_ or not (x.dtype == np.uint8 or np.issubdtype(x.dtype, np.floating)):
            raise DatasetError(f"{p}: {name} has dtype {x.dtype}; expected uint8 pixels or floats")
        shapes.append(x.shape[1:] if x.ndim == 4 else (1, *x.shape[1:]))
    if shapes[0] != shapes[1]:
        raise DatasetError(f"{p}: x_train images are {tuple(shapes[0])} but x_test images {tuple(shapes[1])} (C, H, W)")
    if xtr.dtype != xte.dtype:
        raise DatasetError(f"{p}: x_train is {xtr.dtype} but x_test {xte.dtype}; they must be scaled alike")
    for xn, yn, x, y in (("x_train", "y_train", xtr, ytr), ("x_test", "y_test", xte, yte)):
        if y.ndim != 1 or y.dtype == np.bool_ or not np.issubdtype(y.dtype, np.integer):
            raise DatasetError(f"{p}: {yn} must be a 1-D integer array, got {y.dtype} {y.shape}")
        if len(x) != len(y):
            raise DatasetError(f"{p}: {xn} has {len(x)} images but {yn} {len(y)} labels")
    if len(ytr) == 0:
        raise DatasetError(f"{p}: x_train is empty")
    if given is not None:
        if given.shape != () or not np.issubdtype(given.dtype, np.integer):
            raise DatasetError(f"{p}: num_classes must be an integer scalar, got {given.dtype} {given.shape}")
        num_classes = int(given)
    else:
        num_classes = int(ytr.max()) + 1
    for yn, y in (("y_train", ytr), ("y_test", yte)):
        if len(y) and (y.min() < 0 or y.max() >= num_classes):
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            src = "num_classes" if given is not None else "the largest y_train label + 1"
            raise DatasetError(f"{p}: {yn} holds label {bad}, outside 0..{num_classes - 1} ({src})")
    if num_classes < 2:
        raise DatasetError(f"{p}: {num_classes} class(es); a classifier needs at least 2")
    as4 = [x if x.ndim == 4 else x[:, None] for x in (xtr, xte)]
    return as4[0], ytr.astype(np.int64), as4[1], yte.astype(np.int64), num_classes


def load_npz(
    path: str | os.PathLike[str], *, val_fraction: float, limit_train: int | None, limit_test: int | None, seed: int
) -> DataSplits:
    xtr, ytr, xte, yte, num_classes = read_npz(path)
    scale = 1 / 255 if xtr.dtype == np.uint8 else 1.0
    return in_memory_splits(
        xtr, ytr, xte, yte, scale, num_classes=num_classes, name=str(path),
        val_fraction=val_fraction, limit_train=limit_train, limit_test=limit_test, seed=seed,
    )  # fmt: skip
