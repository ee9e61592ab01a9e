"""A dataset from a user's loader: ``dataset: "package.module:loader"`` with ``loader_args``.

``loader(**loader_args)`` returns ``(train, test)``: two ``torch.utils.data.Dataset``
with ``len()`` whose items are ``(image, label)`` — ``image`` a float tensor
``[C, H, W]`` already normalised as the loader wants (nothing is rescaled here), and
``label`` an int in ``0 .. num_classes-1``. The items are read when a batch needs
them, so the data may be far larger than memory.

The class count is, first match wins: the train set's ``num_classes`` attribute, the
length of its ``classes`` attribute, the largest of its ``targets`` + 1, else the
largest label + 1 over one pass through the train set's labels (a full read: give
one of the attributes for a large dataset). ``targets``, where present, are checked
to lie in range. The input shape is the first train image's.
"""

from __future__ import annotations

from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from qatlab.datasets.errors import DatasetError
from qatlab.datasets.splits import DataSplits, subset_splits
from qatlab.importpath import ImportPathError, resolve


def _labels(ds: Dataset) -> np.ndarray | None:
    t = getattr(ds, "targets", None)
    if t is None:
        return None
    return np.asarray(t.cpu() if isinstance(t, torch.Tensor) else t)


def _scan_labels(ds: Dataset) -> np.ndarray:
    return np.asarray([int(ds[i][1]) for i in range(len(ds))])  # type: ignore[arg-type]


def num_classes_of(path: str, train: Dataset, test: Dataset) -> int:
    n = getattr(train, "num_classes", None)
    if n is None and getattr(train, "classes", None) is not None:
        n = len(train.classes)  # type: ignore[attr-defined]
    labels = {"train": _labels(train), "test": _labels(test)}
    if n is None:
        if labels["train"] is None:
            labels["train"] = _scan_labels(train)
        n = int(labels["train"].max()) + 1 if len(labels["train"]) else 0
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 2:
        raise DatasetError(f"dataset loader {path!r}: {n!r} classes; a classifier needs at least 2")
    for split, y in labels.items():
        if y is not None and len(y) and (y.min() < 0 or y.max() >= n):
            bad = int(y.min()) if y.min() < 0 else int(y.max())
            raise DatasetError(f"dataset loader {path!r}: {split} label {bad} is outside 0..{n - 1}")
    return int(n)


def load_from_loader(
    path: str, loader_args: Mapping[str, Any] | None = None, *,
    val_fraction: float, limit_train: int | None, limit_test: int | None, seed: int,
) -> DataSplits:  # fmt: skip
    try:
        loader = resolve(path, "dataset loader")
    except ImportPathError as e:
        raise DatasetError(str(e)) from e
    out = loader(**dict(loader_args or {}))
    if not (isinstance(out, (tuple, list)) and len(out) == 2 and all(isinstance(d, Dataset) and hasattr(d, "__len__") for d in out)):
        raise DatasetError(
            f"dataset loader {path!r}: returned {type(out).__name__}; expected (train, test), two torch.utils.data.Dataset with len()"
        )
    train, test = out
    if len(train) == 0:
        raise DatasetError(f"dataset loader {path!r}: the train set is empty")
    x0, _ = train[0]
    if not isinstance(x0, torch.Tensor) or x0.dim() != 3 or not x0.is_floating_point():
        got = f"{x0.dtype} {tuple(x0.shape)}" if isinstance(x0, torch.Tensor) else type(x0).__name__
        raise DatasetError(f"dataset loader {path!r}: train images must be float tensors [C, H, W], got {got}")
    n = num_classes_of(path, train, test)
    tr, va, te, _ = subset_splits(train, test, val_fraction=val_fraction, limit_train=limit_train, limit_test=limit_test, seed=seed)
    c, h, w = (int(d) for d in x0.shape)
    return DataSplits(train=tr, val=va, test=te, num_classes=n, input_shape=(c, h, w), name=path, mean=None, std=None)
