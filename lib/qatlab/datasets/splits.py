"""Train/val/test splits of any dataset, and the record of how they were made.

One rule for every source, so that a user's dataset splits the way the built-in
ones do: the train set is shuffled with ``numpy.random.default_rng(seed)``; the
first ``round(val_fraction * N)`` are the validation set, the rest the train set, of
which ``limit_train`` keeps a prefix; the test set is fixed and ``limit_test`` keeps
its first items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch.utils.data import Dataset, Subset, TensorDataset


@dataclass
class DataSplits:
    """A dataset's three splits and what was done to make them.

    The built-in datasets and ``.npz`` files are in memory (``TensorDataset``: float32
    images ``[N, C, H, W]``, int64 labels ``[N]``); image folders and import-path
    loaders are streamed item by item (any ``Dataset`` of ``(image, label)`` pairs).
    """

    train: Dataset
    val: Dataset
    test: Dataset
    num_classes: int
    input_shape: tuple[int, int, int]  # (C, H, W)
    name: str
    mean: float | None  # of train pixels after scaling to [0, 1]; None: left to the loader
    std: float | None

    @property
    def in_memory(self) -> bool:
        """All three splits are tensors (the fast path: batches are slices)."""
        return all(isinstance(s, TensorDataset) for s in (self.train, self.val, self.test))

    def test_tensors(self, limit: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """The first ``limit`` test items (all by default) as (images, labels) tensors.

        For the reports and checks that want a batch in hand; a streamed dataset is read
        item by item, so keep ``limit`` small for a large one.
        """
        test = self.test
        n = len(test) if limit is None else min(int(limit), len(test))
        if isinstance(test, TensorDataset):
            x, y = test.tensors[:2]
            return x[:n], y[:n]
        if n == 0:
            raise ValueError(f"dataset {self.name!r} has no test items")
        items = [test[i] for i in range(n)]
        x = torch.stack([torch.as_tensor(img, dtype=torch.float32) for img, _ in items])
        y = torch.as_tensor([int(label) for _, label in items], dtype=torch.int64)
        return x, y


def check_split_args(val_fraction: float, limit_train: int | None, limit_test: int | None, seed: int) -> None:
    """ValueError naming the argument for a value no split could honour."""
    if isinstance(val_fraction, bool) or not isinstance(val_fraction, (int, float)) or not 0.0 <= val_fraction < 1.0:
        raise ValueError(f"val_fraction must be a number in [0, 1), got {val_fraction!r}")
    for arg, value in (("limit_train", limit_train), ("limit_test", limit_test)):
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{arg} must be a positive integer or None, got {value!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer, got {seed!r}")


def val_train_indices(n: int, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(val, train) indices into a train set of ``n`` items; train before any limit."""
    order = np.random.default_rng(seed).permutation(n)
    n_val = int(round(val_fraction * n))
    val_idx, train_idx = order[:n_val], order[n_val:]
    if len(train_idx) == 0:
        raise ValueError(f"val_fraction={val_fraction} leaves no training items (of {n})")
    return val_idx, train_idx


def subset_splits(
    train: Dataset, test: Dataset, *, val_fraction: float, limit_train: int | None, limit_test: int | None, seed: int
) -> tuple[Dataset, Dataset, Dataset, np.ndarray]:
    """(train, val, test) views of streamed datasets under the module's rule, and the
    train part's indices before ``limit_train`` (where normalisation stats come from)."""
    val_idx, train_idx = val_train_indices(len(train), val_fraction, seed)  # type: ignore[arg-type]
    kept = train_idx[:limit_train] if limit_train is not None else train_idx
    n_test = len(test)  # type: ignore[arg-type]
    test_view: Dataset = Subset(test, range(min(n_test, limit_test))) if limit_test is not None else test
    return Subset(train, kept.tolist()), Subset(train, val_idx.tolist()), test_view, train_idx


def in_memory_splits(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_test: np.ndarray,
    y_test: np.ndarray,
    scale: float,
    *,
    num_classes: int,
    name: str,
    val_fraction: float,
    limit_train: int | None,
    limit_test: int | None,
    seed: int,
) -> DataSplits:
    """Array images ``[N, C, H, W]`` as normalised ``TensorDataset`` splits under the module's rule.

    Pixels are multiplied by ``scale`` (to [0, 1]); mean and std come from the whole
    train part before ``limit_train``, so val/test tensors do not depend on the limit.
    """
    f_scale = np.float32(scale)
    val_idx, train_idx = val_train_indices(len(y_train), val_fraction, seed)
    # float64 sums: float32 accumulation over tens of millions of pixels loses digits.
    pixels = x_train[train_idx].astype(np.float64) * float(f_scale)
    mean, std = float(pixels.mean()), float(pixels.std()) or 1.0
    del pixels
    if limit_train is not None:
        train_idx = train_idx[:limit_train]
    if limit_test is not None:
        x_test, y_test = x_test[:limit_test], y_test[:limit_test]

    def tensors(x: np.ndarray, y: np.ndarray) -> TensorDataset:
        xf = (x.astype(np.float32) * f_scale - np.float32(mean)) / np.float32(std)
        return TensorDataset(torch.from_numpy(np.ascontiguousarray(xf)), torch.from_numpy(np.array(y, dtype=np.int64)))

    c, h, w = (int(d) for d in x_train.shape[1:])
    return DataSplits(
        train=tensors(x_train[train_idx], y_train[train_idx]),
        val=tensors(x_train[val_idx], y_train[val_idx]),
        test=tensors(x_test, y_test),
        num_classes=num_classes,
        input_shape=(c, h, w),
        name=name,
        mean=mean,
        std=std,
    )
