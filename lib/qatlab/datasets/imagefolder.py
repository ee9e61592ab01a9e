"""A dataset as a folder of image files, one subfolder per class, streamed from disk.

Two layouts:

- ``ROOT/train/<class>/*`` and ``ROOT/test/<class>/*``: the given split; every test
  class must also be a train class;
- ``ROOT/<class>/*``: split here, per class, with a fixed seed (0, never the trial's
  seed, so every trial is scored on the same images): of each class's files in name
  order, a shuffled ``test_fraction`` (default 0.2) is the test set.

Classes are the subfolder names in sorted order (label 0 is the first). Images are
read with Pillow, converted to ``channels`` (1: grey, 3: RGB; default: the first
image's) and resized to ``size`` (``H`` or ``[H, W]``, bilinear); without ``size`` every
image must have the first image's size. Pixels are scaled by 1/255 and normalised
with one mean and std estimated on a seeded sample of at most ``STATS_SAMPLE`` train
images (reading the whole train set just for two numbers would cost an epoch).

Options (``loader_args``): ``size``, ``channels``, ``test_fraction``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from qatlab.datasets.errors import DatasetError
from qatlab.datasets.splits import DataSplits, subset_splits

EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm", ".pgm")
OPTIONS = ("size", "channels", "test_fraction")
STATS_SAMPLE = 512
SPLIT_SEED = 0
_GREY_MODES = ("1", "L", "LA", "I", "I;16", "F")


def check_options(opts: Mapping[str, Any]) -> None:
    """ValueError naming the option that an image folder cannot take."""
    unknown = sorted(set(opts) - set(OPTIONS))
    if unknown:
        raise ValueError(f"unknown option(s) {', '.join(unknown)}; an image folder takes {', '.join(OPTIONS)}")
    if "size" in opts:
        _size(opts["size"])
    ch = opts.get("channels")
    if ch is not None and (isinstance(ch, bool) or ch not in (1, 3)):
        raise ValueError(f"channels must be 1 or 3, got {ch!r}")
    tf = opts.get("test_fraction")
    if tf is not None and (isinstance(tf, bool) or not isinstance(tf, (int, float)) or not 0 < tf < 1):
        raise ValueError(f"test_fraction must be in (0, 1), got {tf!r}")


def _size(v: Any) -> tuple[int, int] | None:
    if v is None:
        return None
    hw = [v, v] if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(hw, (list, tuple)) or len(hw) != 2 or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 1 for d in hw):
        raise ValueError(f"size must be a positive integer or [H, W], got {v!r}")
    return int(hw[0]), int(hw[1])


def _classes(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in EXTENSIONS)


def scan(root: str | os.PathLike[str], test_fraction: float = 0.2) -> tuple[list[str], list[tuple[str, int]], list[tuple[str, int]]]:
    """(class names, train (file, label) pairs, test pairs) of an image folder; see the module doc."""
    r = Path(root).expanduser()
    if not r.is_dir():
        raise DatasetError(f"{r}: no such image folder")
    split = (r / "train").is_dir(), (r / "test").is_dir()
    if any(split) and not all(split):
        raise DatasetError(
            f"{r}: has {'train/' if split[0] else 'test/'} but no {'test/' if split[0] else 'train/'}; give both, or one subfolder per class"
        )
    if all(split):
        classes = _classes(r / "train")
        if not classes:
            raise DatasetError(f"{r / 'train'}: no class subfolders (expected train/<class>/<image>)")
        extra = sorted(set(_classes(r / "test")) - set(classes))
        if extra:
            raise DatasetError(f"{r / 'test'}: class folder(s) {', '.join(extra)} have no counterpart in train/")
        train = [(str(f), i) for i, c in enumerate(classes) for f in _images(r / "train" / c)]
        test = [(str(f), i) for i, c in enumerate(classes) if (r / "test" / c).is_dir() for f in _images(r / "test" / c)]
        empty = [c for c in classes if not _images(r / "train" / c)]
    else:
        classes = _classes(r)
        if not classes:
            raise DatasetError(f"{r}: no class subfolders (expected <class>/<image>, or train/ and test/ holding them)")
        rng = np.random.default_rng(SPLIT_SEED)
        train, test, empty = [], [], []
        for i, c in enumerate(classes):
            files = _images(r / c)
            if not files:
                empty.append(c)
                continue
            order = rng.permutation(len(files))
            n_test = int(round(test_fraction * len(files)))
            test += [(str(files[j]), i) for j in sorted(order[:n_test])]
            train += [(str(files[j]), i) for j in sorted(order[n_test:])]
    if empty:
        raise DatasetError(f"{r}: class folder(s) {', '.join(empty)} hold no training images ({', '.join(EXTENSIONS)})")
    if len(classes) < 2:
        raise DatasetError(f"{r}: one class ({classes[0]}); a classifier needs at least 2 class subfolders")
    return classes, train, test


def _open(path: str, channels: int, size: tuple[int, int] | None, expect: tuple[int, int]) -> np.ndarray:
    """uint8 ``[C, H, W]`` of one file, converted and resized, or a DatasetError naming it."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as im:
            im = im.convert("L" if channels == 1 else "RGB")
            if size is not None:
                if (im.height, im.width) != size:
                    im = im.resize((size[1], size[0]), Image.BILINEAR)
            elif (im.height, im.width) != expect:
                raise DatasetError(
                    f"{path}: image is {im.height}x{im.width} but the first image {expect[0]}x{expect[1]}; "
                    "give loader_args.size to resize every image to one size"
                )
            a = np.asarray(im, dtype=np.uint8)
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return a[None] if a.ndim == 2 else a.transpose(2, 0, 1)


class ImageFiles(Dataset):
    """(normalised float32 ``[C, H, W]``, label) per file, read on access (picklable for workers)."""

    def __init__(self, items: list[tuple[str, int]], channels: int, size: tuple[int, int] | None,
                 shape_hw: tuple[int, int], mean: float = 0.0, std: float = 1.0) -> None:  # fmt: skip
        self.items = items
        self.channels = channels
        self.size = size
        self.shape_hw = shape_hw
        self.mean = mean
        self.std = std

    def __len__(self) -> int:
        return len(self.items)

    def raw(self, i: int) -> np.ndarray:
        path, _ = self.items[i]
        return _open(path, self.channels, self.size, self.shape_hw)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        x = (self.raw(i).astype(np.float32) * np.float32(1 / 255) - np.float32(self.mean)) / np.float32(self.std)
        return torch.from_numpy(x), self.items[i][1]


def load_image_folder(
    root: str | os.PathLike[str], options: Mapping[str, Any] | None = None, *,
    val_fraction: float, limit_train: int | None, limit_test: int | None, seed: int,
) -> DataSplits:  # fmt: skip
    opts = dict(options or {})
    try:
        check_options(opts)
    except ValueError as e:
        raise DatasetError(f"{root}: loader_args: {e}") from None
    classes, train_items, test_items = scan(root, opts.get("test_fraction", 0.2))
    first = train_items[0][0]
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(first) as im:
            first_hw, first_mode = (im.height, im.width), im.mode
    except (OSError, UnidentifiedImageError) as e:
        raise DatasetError(f"{first}: not a readable image ({type(e).__name__}: {e})") from e
    channels = opts.get("channels") or (1 if first_mode in _GREY_MODES else 3)
    size = _size(opts.get("size"))
    hw = size or first_hw
    train = ImageFiles(train_items, channels, size, hw)
    test = ImageFiles(test_items, channels, size, hw)
    tr, va, te, train_idx = subset_splits(train, test, val_fraction=val_fraction, limit_train=limit_train, limit_test=limit_test, seed=seed)
    sample = np.random.default_rng(seed).permutation(train_idx)[:STATS_SAMPLE]
    acc = np.zeros(2)
    n = 0
    for i in sorted(sample.tolist()):
        px = train.raw(i).astype(np.float64) / 255.0
        acc += (px.sum(), (px * px).sum())
        n += px.size
    mean = acc[0] / n
    std = float(np.sqrt(max(acc[1] / n - mean * mean, 0.0))) or 1.0
    for ds in (train, test):  # the Subsets above see these, as they hold the same objects
        ds.mean, ds.std = float(mean), std
    return DataSplits(train=tr, val=va, test=te, num_classes=len(classes), input_shape=(channels, *hw),
                      name=str(root), mean=float(mean), std=std)  # fmt: skip
