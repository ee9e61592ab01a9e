"""Datasets: parsing, splits, normalisation, sources and the all-or-nothing download.

Downloads are exercised against a loopback HTTP server serving small synthetic IDX
files, with the checksum table injected, so no test needs the internet.
"""

from __future__ import annotations

import gzip
import hashlib
import http.server
import socket
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from qatlab import data
from qatlab.data import DatasetError, FileCheck

ALL_FILES = [f for pair in data.FMNIST_FILES.values() for f in pair]
HAVE_DEBIAN = all((data.DEBIAN_DIR / f).is_file() for f in ALL_FILES)
needs_debian = pytest.mark.skipif(not HAVE_DEBIAN, reason=f"Debian package dataset-fashion-mnist not installed ({data.DEBIAN_DIR} absent)")


# ---- synthetic IDX files ------------------------------------------------------------


def idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + np.asarray(arr.shape, dtype=">u4").tobytes()
    return gzip.compress(header + arr.astype(np.uint8).tobytes(), mtime=0)


def synthetic_files(n_train: int = 40, n_test: int = 12, side: int = 6) -> dict[str, bytes]:
    rng = np.random.default_rng(1)
    return {
        "train-images-idx3-ubyte.gz": idx_bytes(rng.integers(0, 256, (n_train, side, side))),
        "train-labels-idx1-ubyte.gz": idx_bytes(np.arange(n_train) % 10),
        "t10k-images-idx3-ubyte.gz": idx_bytes(rng.integers(0, 256, (n_test, side, side))),
        "t10k-labels-idx1-ubyte.gz": idx_bytes(np.arange(n_test) % 10),
    }


def checks_for(files: dict[str, bytes]) -> dict[str, str]:
    return {name: hashlib.sha256(blob).hexdigest() for name, blob in files.items()}


@pytest.fixture
def files() -> dict[str, bytes]:
    return synthetic_files()


@pytest.fixture
def data_dir(tmp_path: Path, files: dict[str, bytes]) -> Path:
    folder = tmp_path / "fmnist"
    folder.mkdir()
    for name, blob in files.items():
        (folder / name).write_bytes(blob)
    return folder


@pytest.fixture
def fresh_cache() -> Iterator[None]:
    """Tests that swap files or checksums must not see, or leave, cached arrays."""
    data.clear_cache()
    yield
    data.clear_cache()


# ---- loopback server ----------------------------------------------------------------


@pytest.fixture
def server(files: dict[str, bytes]) -> Iterator[str]:
    """Base URL of a local server. Paths: /good/F, /corrupt/F (same length, wrong
    bytes), /truncated/F (announces more bytes than it sends, then closes), else 404."""

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            _, mode, name = self.path.split("/", 2)
            blob = files.get(name)
            if blob is None or mode not in ("good", "corrupt", "truncated"):
                self.send_error(404, "Not Found")
                return
            if mode == "corrupt":
                blob = bytes(b ^ 0xFF for b in blob)
            length = len(blob) + 1000 if mode == "truncated" else len(blob)
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("Content-Length", str(length))
            self.end_headers()
            self.wfile.write(blob[: len(blob) // 2] if mode == "truncated" else blob)
            self.close_connection = True

        def log_message(self, *args: object) -> None:
            pass

    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


def assert_empty(folder: Path) -> None:
    left = sorted(p.name for p in folder.iterdir()) if folder.exists() else []
    assert left == [], f"download left files behind: {left}"


# ---- the real files -----------------------------------------------------------------


@needs_debian
def test_debian_files_match_pinned_checksums() -> None:
    for name in ALL_FILES:
        data.verify_file(data.DEBIAN_DIR / name, data.FMNIST_CHECKS[name])


@needs_debian
def test_real_fashion_mnist_shapes_dtypes_labels() -> None:
    for split, n in (("train", 60000), ("test", 10000)):
        x, y = data.load_raw("fashion-mnist", split)
        assert x.shape == (n, 28, 28) and x.dtype == np.uint8
        assert y.shape == (n,) and y.dtype == np.int64
        # Fashion-MNIST is exactly balanced: n/10 images per class.
        assert np.bincount(y, minlength=10).tolist() == [n // 10] * 10
        assert 0 < x.mean() < 255 and x.max() == 255
        assert not x.flags.writeable  # the in-memory cache cannot be mutated


@needs_debian
def test_real_fashion_mnist_splits_and_normalisation() -> None:
    s = data.load_dataset("fashion-mnist", limit_train=2000, limit_test=500)
    assert (len(s.train), len(s.val), len(s.test)) == (2000, 6000, 500)
    assert s.input_shape == (1, 28, 28) and s.num_classes == 10 and s.name == "fashion-mnist"
    # Published Fashion-MNIST pixel stats (scaled to [0, 1]): mean 0.286, std 0.353.
    assert s.mean == pytest.approx(0.286, abs=0.002) and s.std == pytest.approx(0.353, abs=0.002)
    x, y = s.train.tensors
    assert x.dtype == torch.float32 and x.shape == (2000, 1, 28, 28) and y.dtype == torch.int64


# ---- digits, splits, normalisation --------------------------------------------------


def test_digits_raw() -> None:
    xtr, ytr = data.load_raw("digits", "train")
    xte, yte = data.load_raw("digits", "test")
    assert len(ytr) + len(yte) == 1797
    assert xtr.shape[1:] == (8, 8) and xtr.dtype == np.uint8 and xtr.max() == 16
    assert ytr.dtype == np.int64 and set(np.unique(yte)) == set(range(10))
    # stratified 80/20: every class has ~20% of its images in test
    counts = np.bincount(yte, minlength=10) / (np.bincount(yte, minlength=10) + np.bincount(ytr, minlength=10))
    assert np.all(np.abs(counts - 0.2) < 0.02)


def test_digits_dataset_shapes_and_stats() -> None:
    s = data.load_dataset("digits")
    assert s.input_shape == (1, 8, 8) and s.num_classes == 10
    n_train_all = len(data.load_raw("digits", "train")[1])
    assert len(s.val) == round(0.1 * n_train_all) and len(s.train) + len(s.val) == n_train_all
    x, y = s.train.tensors
    assert x.shape[1:] == (1, 8, 8) and x.dtype == torch.float32 and y.dtype == torch.int64
    assert int(y.min()) >= 0 and int(y.max()) <= 9
    # normalised with the train split's own stats
    assert float(x.mean()) == pytest.approx(0.0, abs=1e-4)
    assert float(x.double().std(unbiased=False)) == pytest.approx(1.0, abs=1e-4)
    raw = data.load_raw("digits", "train")[0].astype(np.float64) / 16
    assert s.mean == pytest.approx(float(raw.mean()), abs=0.01)


def test_splits_deterministic_and_seeded() -> None:
    a, b = data.load_dataset("digits", seed=3), data.load_dataset("digits", seed=3)
    for part in ("train", "val", "test"):
        for ta, tb in zip(getattr(a, part).tensors, getattr(b, part).tensors):
            assert torch.equal(ta, tb)
    c = data.load_dataset("digits", seed=4)
    assert not torch.equal(a.val.tensors[0], c.val.tensors[0])
    # the test set is fixed, whatever the seed
    assert torch.equal(a.test.tensors[1], c.test.tensors[1])


def test_limits_take_prefixes_and_leave_val_alone() -> None:
    full = data.load_dataset("digits", seed=1)
    small = data.load_dataset("digits", seed=1, limit_train=100, limit_test=30)
    assert len(small.train) == 100 and len(small.test) == 30
    assert torch.equal(small.train.tensors[0], full.train.tensors[0][:100])
    assert torch.equal(small.test.tensors[1], full.test.tensors[1][:30])
    assert torch.equal(small.val.tensors[0], full.val.tensors[0])
    assert (small.mean, small.std) == (full.mean, full.std)
    big = data.load_dataset("digits", limit_train=10**9)  # a limit past the end keeps all
    assert len(big.train) == len(data.load_dataset("digits").train)


def test_val_fraction_zero() -> None:
    s = data.load_dataset("digits", val_fraction=0.0)
    assert len(s.val) == 0 and len(s.train) == len(data.load_raw("digits", "train")[1])


@pytest.mark.parametrize(
    ("kwargs", "arg"),
    [
        ({"name": "cifar"}, "name"),
        ({"val_fraction": -0.1}, "val_fraction"),
        ({"val_fraction": 1.0}, "val_fraction"),
        ({"val_fraction": "0.1"}, "val_fraction"),
        ({"limit_train": -1}, "limit_train"),
        ({"limit_train": 0}, "limit_train"),
        ({"limit_test": -5}, "limit_test"),
        ({"limit_test": 2.5}, "limit_test"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_arguments_name_the_argument(kwargs: dict, arg: str) -> None:
    kwargs = {"name": "digits", **kwargs}
    name = kwargs.pop("name")
    with pytest.raises(ValueError, match=arg):
        data.load_dataset(name, **kwargs)


def test_bad_split_names_the_argument() -> None:
    with pytest.raises(ValueError, match="split"):
        data.load_raw("digits", "validation")
    with pytest.raises(ValueError, match="name"):
        data.load_raw("mnist", "train")


# ---- sources: QATLAB_DATA / root ----------------------------------------------------


def test_qatlab_data_override(data_dir: Path, files: dict[str, bytes], monkeypatch: pytest.MonkeyPatch, fresh_cache: None) -> None:
    monkeypatch.setenv("QATLAB_DATA", str(data_dir))
    assert data.find_fashion_mnist(checksums=checks_for(files)) == data_dir
    # The default (real) checksums reject the synthetic files: never silently used.
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz"):
        data.load_raw("fashion-mnist", "train")
    # With the table pinned to them, the whole pipeline runs on them.
    monkeypatch.setattr(data, "FMNIST_CHECKS", {n: FileCheck((d,)) for n, d in checks_for(files).items()})
    x, y = data.load_raw("fashion-mnist", "train")
    assert x.shape == (40, 6, 6) and y.tolist() == [i % 10 for i in range(40)]
    s = data.load_dataset("fashion-mnist", val_fraction=0.25)
    assert (len(s.train), len(s.val), len(s.test)) == (30, 10, 12) and s.input_shape == (1, 6, 6)


def test_root_argument_wins_and_is_strict(data_dir: Path, files: dict[str, bytes], tmp_path: Path) -> None:
    assert data.find_fashion_mnist(data_dir, checksums=checks_for(files)) == data_dir
    (data_dir / "t10k-labels-idx1-ubyte.gz").unlink()
    with pytest.raises(DatasetError, match="t10k-labels-idx1-ubyte.gz: missing"):
        data.find_fashion_mnist(data_dir, checksums=checks_for(files))


def test_existing_file_with_bad_checksum_is_an_error(data_dir: Path, files: dict[str, bytes]) -> None:
    checks = checks_for(files)
    target = data_dir / "train-labels-idx1-ubyte.gz"
    blob = target.read_bytes()
    target.write_bytes(blob[:-1] + bytes([blob[-1] ^ 1]))  # one flipped bit
    with pytest.raises(DatasetError, match=r"train-labels-idx1-ubyte\.gz: sha256 .* does not match"):
        data.find_fashion_mnist(data_dir, checksums=checks)
    # and in the cache too: reported, not silently replaced
    with pytest.raises(DatasetError, match="train-labels-idx1-ubyte.gz"):
        data.fetch_fashion_mnist(data_dir, base_url="http://127.0.0.1:9", checksums=checks)


# ---- parsing foreign files ----------------------------------------------------------


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"PK\x03\x04 this is a zip, not gzip", "not a readable gzip file"),
        (gzip.compress(b"<html>hello</html>"), "not an IDX file"),
        (gzip.compress(bytes([0, 0, 0x0D, 1, 0, 0, 0, 1]) + b"\0" * 4), "not unsigned byte"),
        (gzip.compress(bytes([0, 0, 8, 3, 0, 0, 0, 2, 0, 0, 0, 2, 0, 0, 0, 2]) + b"\0" * 7), "holds 23 bytes"),
        (gzip.compress(bytes([0, 0, 8, 3, 0, 0])), "header truncated"),
    ],
)
def test_foreign_file_is_a_clear_error(tmp_path: Path, blob: bytes, message: str) -> None:
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(blob)
    with pytest.raises(DatasetError, match=message) as info:
        data.read_idx(path)
    assert str(path) in str(info.value)


def test_read_idx_roundtrip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x.gz"
    path.write_bytes(idx_bytes(arr))
    assert np.array_equal(data.read_idx(path), arr)


def test_mismatched_image_and_label_counts(data_dir: Path, files: dict[str, bytes], fresh_cache: None) -> None:
    (data_dir / "t10k-labels-idx1-ubyte.gz").write_bytes(idx_bytes(np.zeros(5)))
    with pytest.raises(DatasetError, match="12 images but"):
        data._read_pair(data_dir, "test")


# ---- downloads against the loopback server --------------------------------------------


def test_download_good_files(server: str, files: dict[str, bytes], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    folder = data.fetch_fashion_mnist(cache, base_url=f"{server}/good/", checksums=checks_for(files))
    assert folder == cache
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)
    for name, blob in files.items():
        assert (cache / name).read_bytes() == blob
    # a second call finds them verified in place (no server needed)
    data.fetch_fashion_mnist(cache, base_url="http://127.0.0.1:9", checksums=checks_for(files))


def test_download_via_env_url_and_find(server: str, files: dict[str, bytes], tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("QATLAB_DATA", raising=False)
    monkeypatch.setenv("QATLAB_FMNIST_URL", f"{server}/good")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    folder = data.find_fashion_mnist(checksums=checks_for(files), debian_dir=None)
    assert folder == tmp_path / "xdg" / "qatlab" / "fashion-mnist"
    assert sorted(p.name for p in folder.iterdir()) == sorted(files)


def test_download_checks_pinned_size(server: str, files: dict[str, bytes], tmp_path: Path) -> None:
    name = "train-labels-idx1-ubyte.gz"
    check = FileCheck((hashlib.sha256(files[name]).hexdigest(),), size=len(files[name]) + 1)
    with pytest.raises(DatasetError, match=f"{name}.*expected {len(files[name]) + 1}"):
        data.download_file(f"{server}/good/{name}", tmp_path / name, check)
    assert_empty(tmp_path)


@pytest.mark.parametrize(
    ("mode", "message"),
    [
        ("corrupt", "sha256 .* does not match"),
        ("truncated", "truncated"),
        ("missing", "HTTP 404"),
    ],
)
def test_failed_download_leaves_nothing(server: str, files: dict[str, bytes], tmp_path: Path, mode: str, message: str) -> None:
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match=message) as info:
        data.fetch_fashion_mnist(cache, base_url=f"{server}/{mode}/", checksums=checks_for(files))
    text = str(info.value)
    assert "train-images-idx3-ubyte.gz" in text  # which file
    assert "dataset-fashion-mnist" in text and "QATLAB_DATA" in text and "QATLAB_FMNIST_URL" in text
    assert_empty(cache)


def test_connection_refused_is_clear(files: dict[str, bytes], tmp_path: Path) -> None:
    with socket.socket() as s:  # a port that was just free: nothing listens on it
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cache = tmp_path / "cache"
    with pytest.raises(DatasetError, match="train-images-idx3-ubyte.gz.*failed") as info:
        data.fetch_fashion_mnist(cache, base_url=f"http://127.0.0.1:{port}/", checksums=checks_for(files), timeout=5)
    assert "QATLAB_FMNIST_URL" in str(info.value)
    assert_empty(cache)


def test_partial_cache_is_completed(server: str, files: dict[str, bytes], tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    cache.mkdir()
    (cache / "train-labels-idx1-ubyte.gz").write_bytes(files["train-labels-idx1-ubyte.gz"])
    data.fetch_fashion_mnist(cache, base_url=f"{server}/good", checksums=checks_for(files))
    assert sorted(p.name for p in cache.iterdir()) == sorted(files)


def test_checksum_table_must_cover_every_file(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="checksums: no entry for t10k"):
        data.fetch_fashion_mnist(tmp_path, checksums={"train-images-idx3-ubyte.gz": "00", "train-labels-idx1-ubyte.gz": "00"})
