"""Dataset loaders as a user would write them: ``(train, test)`` Datasets."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from torch.utils.data import Dataset


class Blobs(Dataset):
    """Separable synthetic images: class c lights up row c (plus noise), made on access."""

    def __init__(self, n: int, classes: int, side: int, seed: int, targets: bool = True) -> None:
        g = torch.Generator().manual_seed(seed)
        self.labels = torch.randint(0, classes, (n,), generator=g)
        self.noise = torch.randn(n, 1, side, side, generator=g) * 0.3
        self.classes = [f"c{i}" for i in range(classes)]
        self.side = side
        if targets:
            self.targets = self.labels.tolist()

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = self.noise[i].clone()
        x[0, int(self.labels[i]) % self.side] += 2.0
        return x, int(self.labels[i])


def load(n_train: int = 200, n_test: int = 60, classes: int = 3, side: int = 8) -> tuple[Blobs, Blobs]:
    return Blobs(n_train, classes, side, 0), Blobs(n_test, classes, side, 1)


def load_bad_labels() -> tuple[Blobs, Blobs]:
    train, test = load()
    test.targets = [5] * len(test)
    return train, test


def load_no_datasets() -> list[int]:
    return [1, 2]


def load_plain(n_train: int = 40) -> tuple[Blobs, Blobs]:
    """No ``classes`` / ``targets``: the class count comes from a pass over the labels."""
    train, test = Blobs(n_train, 4, 8, 0, targets=False), Blobs(10, 4, 8, 1, targets=False)
    del train.classes, test.classes
    return train, test


def load_gated(gate: str, trials: str) -> tuple[Blobs, Blobs]:
    """``load()``, held while some trial under ``trials`` has finished and the file
    ``gate`` does not exist: a sweep's first trial runs, the next ones wait. A test
    interrupts the sweep then, with trials left, however fast they would have run."""
    while not os.path.exists(gate) and any(Path(trials).glob("*/result.json")):
        time.sleep(0.2)
    return load()
