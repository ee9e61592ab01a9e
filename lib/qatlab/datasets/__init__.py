"""Datasets beyond the built-in ones: what a TrainConfig's ``dataset`` may name.

- ``package.module:loader`` — a user's loader returning ``(train, test)`` Datasets
  (:mod:`qatlab.datasets.importloader`), options in ``loader_args``;
- ``PATH.npz`` — arrays ``x_train, y_train, x_test, y_test`` (:mod:`qatlab.datasets.npz`);
- ``PATH/`` — an image folder, one subfolder per class (:mod:`qatlab.datasets.imagefolder`),
  options ``size``, ``channels``, ``test_fraction`` in ``loader_args``.

Each gives a :class:`DataSplits` split the way the built-in datasets are
(:mod:`qatlab.datasets.splits`); ``qatlab.data.load_dataset`` dispatches here.
"""

from __future__ import annotations

import os
from typing import Any, Mapping

from qatlab.datasets.errors import DatasetError
from qatlab.datasets.splits import DataSplits, check_split_args
from qatlab.sources import dataset_kind


def load_user_dataset(
    name: str, loader_args: Mapping[str, Any] | None = None, *,
    val_fraction: float = 0.1, limit_train: int | None = None, limit_test: int | None = None, seed: int = 0,
) -> DataSplits:  # fmt: skip
    """The splits of a user dataset named by import path, ``.npz`` path or folder path."""
    check_split_args(val_fraction, limit_train, limit_test, seed)
    kind = dataset_kind(name)
    kw: dict[str, Any] = dict(val_fraction=val_fraction, limit_train=limit_train, limit_test=limit_test, seed=seed)
    if kind == "import":
        from qatlab.datasets.importloader import load_from_loader

        return load_from_loader(name, loader_args, **kw)
    if loader_args:
        if kind != "folder":
            raise DatasetError(f"{name}: loader_args do not apply to a {kind} dataset")
    if kind == "npz":
        from qatlab.datasets.npz import load_npz

        return load_npz(os.path.expanduser(name), **kw)
    if kind == "folder":
        from qatlab.datasets.imagefolder import load_image_folder

        return load_image_folder(os.path.expanduser(name), loader_args, **kw)
    raise ValueError(f"name: {name!r} is not a user dataset (an import path, a .npz file or a folder path)")


__all__ = ["DataSplits", "DatasetError", "load_user_dataset"]
