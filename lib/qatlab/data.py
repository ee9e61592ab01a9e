"""Datasets as torch tensors: Fashion-MNIST and scikit-learn's ``digits``; and the
entry point for every dataset a TrainConfig may name (:func:`load_dataset`: a user's
loader, ``.npz`` file or image folder goes to :mod:`qatlab.datasets`).

Why this module is careful about files: every experiment's accuracy is only as
trustworthy as the bytes it was trained on, and a sweep runs many processes that
may all try to fetch the data at once. So every Fashion-MNIST file is checked
against a pinned sha256 before it is parsed, a download lands under its final name
only after it has been verified (temp file + ``os.replace``), and anything that
goes wrong is a :class:`DatasetError` that says which file, what happened and how
to fix it.

Where Fashion-MNIST comes from, first match wins:

1. ``root=`` (an argument) or ``$QATLAB_DATA``: a folder holding the four standard
   ``*-ubyte.gz`` files. Being explicit, it is strict: a missing file is an error.
2. ``/usr/share/datasets/fashion-mnist`` (Debian package ``dataset-fashion-mnist``),
   when it holds all four files.
3. The user's cache, ``$XDG_CACHE_HOME/qatlab/fashion-mnist`` (or
   ``~/.cache/qatlab/fashion-mnist``); missing files are downloaded into it from
   ``$QATLAB_FMNIST_URL`` or the upstream URL.

Splits (see :func:`load_dataset`): the test set is fixed per dataset; the
validation set is a ``seed``-shuffled slice of the training set; ``limit_train``
takes a prefix of the rest of that same shuffle, so the validation set, and the
normalisation stats, never depend on the limits.
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import http.client
import os
import urllib.error
import urllib.request
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from qatlab.atomic import atomic_path
from qatlab.datasets import load_user_dataset
from qatlab.datasets.errors import DatasetError
from qatlab.datasets.splits import DataSplits, check_split_args, in_memory_splits
from qatlab.sources import dataset_kind

__all__ = ["DATASETS", "DataSplits", "DatasetError", "FileCheck", "load_dataset", "load_raw"]

DATASETS = ("fashion-mnist", "digits")
SPLITS = ("train", "test")

DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
DEFAULT_FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
DOWNLOAD_TIMEOUT_S = 60.0

FMNIST_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}

_FIX_HINT = (
    "To fix: install the Debian package 'dataset-fashion-mnist' "
    "(apt-get install dataset-fashion-mnist), or set QATLAB_DATA to a folder holding "
    "the four Fashion-MNIST *-ubyte.gz files, or set QATLAB_FMNIST_URL to a mirror."
)


@dataclass(frozen=True)
class FileCheck:
    """What a dataset file must be.

    sha256: the accepted digests. More than one because Debian's package ships the
            upstream deflate streams with a normalised gzip header
            (strip-nondeterminism drops the stored file name and mtime), so its files
            hash differently from the upstream ones while holding the same data.
    size:   byte size of the file a download must deliver, when known.
    """

    sha256: tuple[str, ...]
    size: int | None = None


# The files as published upstream (zalandoresearch/fashion-mnist), then Debian's
# repack of the same files (0.0~git20200523.55506a9-1): 23-24 bytes shorter, exactly
# the gzip FNAME field, same decompressed IDX data.
FMNIST_CHECKS: dict[str, FileCheck] = {
    "train-images-idx3-ubyte.gz": FileCheck(
        (
            "08dc20ab1689590a0bcd66e874647b6ee8464e2d501b5a3f1f78831db19a3fdc",
            "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",
        ),
        26421880,
    ),
    "train-labels-idx1-ubyte.gz": FileCheck(
        (
            "b0197879cbda89f3dc7b894f9fd52b858e68ea4182b6947c9d8c2b67e5f18dcc",
            "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",
        ),
        29515,
    ),
    "t10k-images-idx3-ubyte.gz": FileCheck(
        (
            "78dcbbfb5a27efaf1b6c1d616caca68560be8766c5bffcb2791df9273a534229",
            "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",
        ),
        4422102,
    ),
    "t10k-labels-idx1-ubyte.gz": FileCheck(
        (
            "42bd18137a62d5998cdeae52bf3a0676ac6b706f5cf8439b47bb5b151ae3dccf",
            "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",
        ),
        5148,
    ),
}

# A checksum table as callers may pass it: a FileCheck, or bare digest(s).
Checks = Mapping[str, "FileCheck | str | Sequence[str]"]


# ---- files: where they are, verifying, downloading ---------------------------------


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/qatlab/fashion-mnist``, else ``~/.cache/qatlab/fashion-mnist``."""
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "qatlab" / "fashion-mnist"


def _normalise_checks(checks: Checks | None) -> dict[str, FileCheck]:
    if checks is None:
        return dict(FMNIST_CHECKS)
    out: dict[str, FileCheck] = {}
    for name, check in checks.items():
        if isinstance(check, FileCheck):
            out[name] = check
        elif isinstance(check, str):
            out[name] = FileCheck((check.lower(),))
        else:
            out[name] = FileCheck(tuple(d.lower() for d in check))
    missing = [f for pair in FMNIST_FILES.values() for f in pair if f not in out]
    if missing:
        raise ValueError(f"checksums: no entry for {', '.join(missing)}")
    return out


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in chunks so a 26 MB file costs no extra memory."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_file(path: Path, check: FileCheck) -> None:
    """Raise :class:`DatasetError` unless ``path``'s sha256 is one of ``check``'s.

    A file that fails is never used: silently training on a damaged or different
    file would make every number downstream wrong without anyone knowing.
    """
    digest = sha256_file(path)
    if digest not in check.sha256:
        raise DatasetError(
            f"{path}: sha256 {digest} does not match the pinned "
            f"{' or '.join(check.sha256)}; the file is corrupt, truncated or not the "
            f"expected dataset file. Delete it (a cached copy is downloaded again) or "
            f"replace it. {_FIX_HINT}"
        )


def download_file(url: str, dest: Path, check: FileCheck, *, timeout: float = DOWNLOAD_TIMEOUT_S) -> Path:
    """Fetch ``url`` to ``dest``, all or nothing.

    The bytes go to a temp file beside ``dest`` (``qatlab.atomic``); size and sha256 are checked before the rename. On any
    failure the temp file is removed and nothing appears under ``dest``'s name, so a
    later run never mistakes a half download for data. Concurrent downloaders each
    write their own temp file; the last rename wins with identical bytes.
    """
    with atomic_path(dest) as tmp:
        try:
            h = hashlib.sha256()
            received = 0
            with open(tmp, "wb") as out, urllib.request.urlopen(url, timeout=timeout) as resp:
                length = resp.headers.get("Content-Length")
                for chunk in iter(lambda: resp.read(1 << 16), b""):
                    out.write(chunk)
                    h.update(chunk)
                    received += len(chunk)
        except urllib.error.HTTPError as exc:
            raise DatasetError(f"downloading {dest.name} from {url} failed: HTTP {exc.code} {exc.reason}. {_FIX_HINT}") from exc
        except (urllib.error.URLError, OSError, http.client.HTTPException, ValueError) as exc:
            # URLError: refused/unresolvable; OSError: timeouts, resets;
            # HTTPException: a broken response (IncompleteRead on a chunked body, bad
            # status line); ValueError: a malformed URL.
            reason = getattr(exc, "reason", exc)
            raise DatasetError(f"downloading {dest.name} from {url} failed: {reason}. {_FIX_HINT}") from exc
        # http.client returns a short body without complaint when the server closes
        # early, so the length has to be checked here.
        if length is not None and length.isdigit() and received != int(length):
            raise DatasetError(
                f"downloading {dest.name} from {url} failed: truncated, got {received} of {length} bytes. Try again. {_FIX_HINT}"
            )
        if check.size is not None and received != check.size:
            raise DatasetError(f"downloading {dest.name} from {url} failed: got {received} bytes, expected {check.size}. {_FIX_HINT}")
        digest = h.hexdigest()
        if digest not in check.sha256:
            raise DatasetError(
                f"downloading {dest.name} from {url} failed: sha256 {digest} does not match "
                f"the pinned {' or '.join(check.sha256)} (corrupt download or wrong file). "
                f"{_FIX_HINT}"
            )
    return dest


def fetch_fashion_mnist(
    cache_dir: str | os.PathLike[str] | None = None,
    *,
    base_url: str | None = None,
    checksums: Checks | None = None,
    timeout: float = DOWNLOAD_TIMEOUT_S,
) -> Path:
    """Make the cache folder hold all four verified files, downloading the missing ones.

    ``base_url`` defaults to ``$QATLAB_FMNIST_URL``, then the upstream URL. A cached
    file that fails its checksum is an error (not silently replaced), because it
    means something else is writing there.
    """
    checks = _normalise_checks(checksums)
    folder = Path(cache_dir) if cache_dir is not None else default_cache_dir()
    base = base_url or os.environ.get("QATLAB_FMNIST_URL") or DEFAULT_FMNIST_URL
    for name in (f for pair in FMNIST_FILES.values() for f in pair):
        path = folder / name
        if path.exists():
            verify_file(path, checks[name])
        else:
            download_file(base.rstrip("/") + "/" + name, path, checks[name], timeout=timeout)
    return folder


def find_fashion_mnist(
    root: str | os.PathLike[str] | None = None,
    *,
    checksums: Checks | None = None,
    debian_dir: str | os.PathLike[str] | None = DEBIAN_DIR,
    cache_dir: str | os.PathLike[str] | None = None,
    base_url: str | None = None,
) -> Path:
    """The folder holding the four verified Fashion-MNIST files (see the module doc for the order).

    ``debian_dir=None`` skips the Debian location (tests use it to reach the download path).
    """
    checks = _normalise_checks(checksums)
    names = [f for pair in FMNIST_FILES.values() for f in pair]
    explicit = root if root is not None else os.environ.get("QATLAB_DATA") or None
    if explicit is not None:
        folder = Path(explicit)
        where = "root" if root is not None else "QATLAB_DATA"
        for name in names:
            path = folder / name
            if not path.is_file():
                raise DatasetError(f"{path}: missing ({where}={str(folder)!r} must hold {name}). {_FIX_HINT}")
            verify_file(path, checks[name])
        return folder
    if debian_dir is not None and all((Path(debian_dir) / n).is_file() for n in names):
        for name in names:
            verify_file(Path(debian_dir) / name, checks[name])
        return Path(debian_dir)
    return fetch_fashion_mnist(cache_dir, base_url=base_url, checksums=checks)


# ---- IDX parsing -----------------------------------------------------------------


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Parse a gzip-compressed IDX file of unsigned bytes into a uint8 array.

    The header is validated (magic, rank, sizes) so a foreign file fails here with
    its name rather than as a reshape error deep in training.
    """
    path = Path(path)
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as exc:  # gzip.BadGzipFile is an OSError
        raise DatasetError(f"{path}: not a readable gzip file ({exc}); expected a *-ubyte.gz IDX file") from exc
    if len(data) < 4 or data[0] != 0 or data[1] != 0:
        raise DatasetError(f"{path}: not an IDX file (bad magic number {data[:4].hex() or 'empty'})")
    if data[2] != 0x08:
        raise DatasetError(f"{path}: IDX element type 0x{data[2]:02x} is not unsigned byte (0x08)")
    ndim = data[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(data) < header:
        raise DatasetError(f"{path}: IDX header truncated or rank {ndim} invalid")
    dims = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    expected = header + int(np.prod(dims, dtype=np.int64))
    if len(data) != expected:
        raise DatasetError(f"{path}: IDX says shape {dims} ({expected} bytes) but the file holds {len(data)} bytes")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(dims)


def _read_pair(folder: Path, split: str) -> tuple[np.ndarray, np.ndarray]:
    img_name, lbl_name = FMNIST_FILES[split]
    images = read_idx(folder / img_name)
    labels = read_idx(folder / lbl_name)
    if images.ndim != 3 or labels.ndim != 1:
        raise DatasetError(f"{folder}: {img_name} must be rank 3 and {lbl_name} rank 1, got {images.ndim} and {labels.ndim}")
    if len(images) != len(labels):
        raise DatasetError(f"{folder}: {img_name} has {len(images)} images but {lbl_name} {len(labels)} labels")
    if labels.size and labels.max() > 9:
        raise DatasetError(f"{folder}: {lbl_name} holds label {labels.max()}, outside 0..9")
    return images, labels.astype(np.int64)


@functools.lru_cache(maxsize=8)
def _fashion_split(root: str | None, env_data: str | None, env_url: str | None, split: str) -> tuple[np.ndarray, np.ndarray]:
    # Keyed on the env vars too, so changing QATLAB_DATA in a process is honoured.
    del env_data, env_url
    folder = find_fashion_mnist(root)
    images, labels = _read_pair(folder, split)
    # Shared between callers: read-only so nobody mutates the cache in place.
    images.flags.writeable = False
    labels.flags.writeable = False
    return images, labels


@functools.lru_cache(maxsize=1)
def _digits_splits() -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Fixed, stratified 80/20 train/test split of the 1797 digits (seed 0, never ``seed``).

    The test set is fixed so that runs with different seeds are scored on the same images.
    """
    from sklearn.datasets import load_digits  # heavy import, only when digits is used

    x, y = load_digits(return_X_y=True)
    images = x.reshape(-1, 8, 8).astype(np.uint8)  # values are integers 0..16
    labels = y.astype(np.int64)
    rng = np.random.default_rng(0)
    test_idx = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test_idx.append(idx[: int(round(0.2 * len(idx)))])
    test = rng.permutation(np.concatenate(test_idx))
    train = rng.permutation(np.setdiff1d(np.arange(len(labels)), test))
    out = {"train": (images[train], labels[train]), "test": (images[test], labels[test])}
    for arrs in out.values():
        for a in arrs:
            a.flags.writeable = False
    return out


def _check_name(name: str) -> None:
    if name not in DATASETS:
        raise ValueError(
            f"name: unknown dataset {name!r}; expected one of {', '.join(DATASETS)}, "
            "an import path package.module:loader, a .npz file or an image folder (a path with a '/')"
        )


def load_raw(name: str, split: str, root: str | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Images ``uint8 [N, H, W]`` and labels ``int64 [N]`` of one split, read-only and cached.

    ``digits`` pixels are 0..16 (as scikit-learn ships them); Fashion-MNIST's 0..255.
    ``root`` applies to Fashion-MNIST only (a folder with the four gz files).
    """
    _check_name(name)
    if split not in SPLITS:
        raise ValueError(f"split: unknown split {split!r}; expected one of {', '.join(SPLITS)}")
    if name == "digits":
        return _digits_splits()[split]
    return _fashion_split(
        None if root is None else str(root),
        os.environ.get("QATLAB_DATA"),
        os.environ.get("QATLAB_FMNIST_URL"),
        split,
    )


def clear_cache() -> None:
    """Forget the arrays parsed so far (tests; or after the files on disk changed)."""
    _fashion_split.cache_clear()
    _digits_splits.cache_clear()


# ---- splits and tensors -------------------------------------------------------------


_PIXEL_MAX = {"fashion-mnist": 255.0, "digits": 16.0}


def load_dataset(
    name: str,
    *,
    val_fraction: float = 0.1,
    limit_train: int | None = None,
    limit_test: int | None = None,
    seed: int = 0,
    root: str | None = None,
    loader_args: Mapping[str, object] | None = None,
) -> DataSplits:
    """Train/val/test splits, normalised with the train split's mean and std.

    ``name`` is a built-in dataset (tensors in memory, described here) or what
    :func:`qatlab.datasets.load_user_dataset` reads (``loader_args`` go there).

    - The train split is shuffled with ``numpy.random.default_rng(seed)``; the first
      ``round(val_fraction * N)`` images are the validation set, the rest the train
      set, of which ``limit_train`` keeps a prefix (not stratified: the shuffle keeps
      classes roughly balanced). So val does not depend on ``limit_train``.
    - mean/std are taken over the whole train part (before ``limit_train``) after
      scaling pixels to [0, 1], so val/test tensors are the same whatever the limit.
    - The test set is fixed; ``limit_test`` keeps its first images (its order is
      already mixed in both datasets).
    """
    if name not in DATASETS and isinstance(name, str) and dataset_kind(name) != "unknown":
        return load_user_dataset(name, loader_args, val_fraction=val_fraction, limit_train=limit_train, limit_test=limit_test, seed=seed)
    _check_name(name)
    if loader_args:
        raise ValueError(f"loader_args: the built-in dataset {name!r} takes none, got {dict(loader_args)}")
    check_split_args(val_fraction, limit_train, limit_test, seed)

    train_x, train_y = load_raw(name, "train", root)
    test_x, test_y = load_raw(name, "test", root)

    return in_memory_splits(
        train_x[:, None], train_y, test_x[:, None], test_y, 1.0 / _PIXEL_MAX[name], num_classes=10, name=name,
        val_fraction=val_fraction, limit_train=limit_train, limit_test=limit_test, seed=seed,
    )  # fmt: skip
