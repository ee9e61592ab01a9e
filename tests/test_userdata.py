"""A user's own data and model: .npz arrays, image folders, loaders and factories by import path."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from torch.utils.data import Dataset, TensorDataset

from qatlab.data import DatasetError, load_dataset
from qatlab.datasets.imagefolder import ImageFiles, scan
from qatlab.datasets.splits import val_train_indices
from qatlab.importpath import ImportPathError
from qatlab.train import evaluate, int_predictions
from qatlab.usermodel import UserModelError, make_model

LOADERS = "tests.usercode.loaders"
NETS = "tests.usercode.nets"


def save_npz(
    path: Path, n_train: int = 60, n_test: int = 20, shape: tuple[int, ...] = (6, 6), classes: int = 3, seed: int = 0, **over
) -> Path:
    rng = np.random.default_rng(seed)
    arrays = {
        "x_train": rng.integers(0, 256, (n_train, *shape), dtype=np.uint8),
        "y_train": np.arange(n_train) % classes,
        "x_test": rng.integers(0, 256, (n_test, *shape), dtype=np.uint8),
        "y_test": np.arange(n_test) % classes,
    }
    arrays.update(over)
    np.savez(path, **{k: v for k, v in arrays.items() if v is not None})
    return path


def save_png(path: Path, arr: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)


def image_folder(root: Path, classes: tuple[str, ...] = ("cat", "dog"), per_class: int = 5, split: bool = True,
                 side: int = 6, seed: int = 0) -> dict[str, np.ndarray]:  # fmt: skip
    """Grey PNGs; returns file path -> pixels written."""
    rng = np.random.default_rng(seed)
    written = {}
    for part in ("train", "test") if split else ("",):
        for c in classes:
            for i in range(per_class):
                arr = rng.integers(0, 256, (side, side), dtype=np.uint8)
                p = root / part / c / f"{i:03d}.png" if part else root / c / f"{i:03d}.png"
                save_png(p, arr)
                written[str(p)] = arr
    return written


# ---- .npz ---------------------------------------------------------------------------------


def test_npz_splits_and_normalisation_follow_the_builtin_rule(tmp_path: Path) -> None:
    path = save_npz(tmp_path / "d.npz", n_train=50, n_test=20, classes=4)
    s = load_dataset(str(path), val_fraction=0.2, limit_train=30, limit_test=7, seed=3)
    assert s.in_memory and s.num_classes == 4 and s.input_shape == (1, 6, 6)
    z = np.load(path)
    val_idx, train_idx = val_train_indices(50, 0.2, 3)
    # reference: plain float64 numpy over the train part before the limit, pixels
    # scaled by float32(1/255) as the built-in datasets scale them
    px = z["x_train"][train_idx].astype(np.float64) * float(np.float32(1 / 255))
    assert s.mean == pytest.approx(px.mean(), rel=1e-12) and s.std == pytest.approx(px.std(), rel=1e-12)
    x, y = s.train.tensors
    assert len(y) == 30 and torch.equal(y, torch.from_numpy(z["y_train"][train_idx[:30]]))
    expect = (z["x_train"][train_idx[:30]].astype(np.float32) / 255 - s.mean) / s.std
    assert torch.allclose(x[:, 0], torch.from_numpy(expect.astype(np.float32)), atol=1e-5)
    assert torch.equal(s.val.tensors[1], torch.from_numpy(z["y_train"][val_idx]))
    assert torch.equal(s.test.tensors[1], torch.from_numpy(z["y_test"][:7]))


def test_npz_channels_first_and_float_pixels(tmp_path: Path) -> None:
    path = save_npz(tmp_path / "c.npz", shape=(3, 5, 4), x_train=np.random.default_rng(0).random((60, 3, 5, 4)),
                    x_test=np.random.default_rng(1).random((20, 3, 5, 4)), num_classes=np.int64(5))  # fmt: skip
    s = load_dataset(str(path))
    assert s.input_shape == (3, 5, 4) and s.num_classes == 5


@pytest.mark.parametrize(
    "over, match",
    [
        ({"y_test": None}, "missing array.*y_test"),
        ({"x_test": np.zeros((20, 7, 6), np.uint8)}, r"x_train images are \(1, 6, 6\) but x_test images \(1, 7, 6\)"),
        ({"y_train": np.arange(59) % 3}, "x_train has 60 images but y_train 59 labels"),
        ({"y_test": np.full(20, 3)}, "y_test holds label 3, outside 0..2"),
        ({"y_train": -(np.arange(60) % 3)}, "y_train holds label -2"),
        ({"x_train": np.zeros((60, 6), np.uint8)}, r"x_train has shape \(60, 6\)"),
        ({"y_train": np.zeros(60, np.float32)}, "y_train must be a 1-D integer array"),
        ({"num_classes": np.int64(2)}, "holds label 2, outside 0..1"),
    ],
)
def test_npz_errors_name_the_array(tmp_path: Path, over: dict, match: str) -> None:
    path = save_npz(tmp_path / "bad.npz", **over)
    with pytest.raises(DatasetError, match=match) as e:
        load_dataset(str(path))
    assert str(path) in str(e.value)


def test_npz_missing_or_foreign_file(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no such .npz file"):
        load_dataset(str(tmp_path / "none.npz"))
    (tmp_path / "junk.npz").write_bytes(b"not a zip")
    with pytest.raises(DatasetError, match="not a readable .npz"):
        load_dataset(str(tmp_path / "junk.npz"))


# ---- image folders ------------------------------------------------------------------------


def test_image_folder_train_test_layout_reads_the_pixels(tmp_path: Path) -> None:
    written = image_folder(tmp_path / "imgs", classes=("b", "a", "c"), per_class=4)
    s = load_dataset(str(tmp_path / "imgs"), val_fraction=0.25, seed=1)
    assert not s.in_memory and s.num_classes == 3 and s.input_shape == (1, 6, 6)
    assert len(s.train) + len(s.val) == 12 and len(s.val) == 3 and len(s.test) == 12
    base: ImageFiles = s.test.dataset if hasattr(s.test, "dataset") else s.test  # type: ignore[assignment]
    # labels follow sorted class names; pixels are the PNG's exactly (scaled, normalised)
    for i, (path, label) in enumerate(base.items):
        assert label == ["a", "b", "c"].index(Path(path).parent.name)
        x, y = base[i]
        ref = (written[path].astype(np.float32) / 255 - np.float32(s.mean)) / np.float32(s.std)
        assert y == label and torch.allclose(x[0], torch.from_numpy(ref), atol=1e-6)
    # the sample covers the whole train part here: stats equal the plain full computation
    train_base = s.train.dataset  # type: ignore[attr-defined]
    idx = sorted(s.train.indices)  # type: ignore[attr-defined]
    px = np.concatenate([written[train_base.items[i][0]].ravel() / 255.0 for i in idx])
    assert s.mean == pytest.approx(px.mean(), rel=1e-9) and s.std == pytest.approx(px.std(), rel=1e-9)


def test_test_tensors_of_a_streamed_dataset_equal_its_items(tmp_path: Path) -> None:
    image_folder(tmp_path / "imgs", classes=("a", "b"), per_class=3)
    s = load_dataset(str(tmp_path / "imgs"), val_fraction=0.25, seed=0)
    x, y = s.test_tensors(4)
    assert x.shape == (4, 1, 6, 6) and x.dtype == torch.float32 and y.dtype == torch.int64
    for i in range(4):
        xi, yi = s.test[i]
        assert torch.equal(x[i], xi) and int(y[i]) == yi
    assert s.test_tensors()[0].shape[0] == len(s.test)
    npz = load_dataset(str(save_npz(tmp_path / "d.npz")))
    assert torch.equal(npz.test_tensors(5)[0], npz.test.tensors[0][:5])


def test_image_folder_single_folder_split_is_fixed_and_per_class(tmp_path: Path) -> None:
    image_folder(tmp_path / "flat", classes=("x", "y"), per_class=10, split=False)
    classes, train, test = scan(tmp_path / "flat", test_fraction=0.3)
    assert classes == ["x", "y"] and len(test) == 6 and len(train) == 14
    assert sum(1 for _, lab in test if lab == 0) == 3  # stratified
    assert scan(tmp_path / "flat", test_fraction=0.3) == (classes, train, test)  # deterministic
    a = load_dataset(str(tmp_path / "flat"), seed=0, loader_args={"test_fraction": 0.3})
    b = load_dataset(str(tmp_path / "flat"), seed=5, loader_args={"test_fraction": 0.3})
    assert [p for p, _ in a.test.items] == [p for p, _ in b.test.items]  # the test set ignores the seed


def test_image_folder_resize_and_channels(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    for c in ("a", "b"):
        for i, hw in enumerate([(5, 7), (9, 4)]):
            save_png(tmp_path / "rgb" / c / f"{i}.png", rng.integers(0, 256, (*hw, 3), dtype=np.uint8))
    s = load_dataset(str(tmp_path / "rgb"), loader_args={"size": [8, 6], "test_fraction": 0.5})
    assert s.input_shape == (3, 8, 6) and s.train[0][0].shape == (3, 8, 6)
    g = load_dataset(str(tmp_path / "rgb"), loader_args={"size": 4, "channels": 1, "test_fraction": 0.5})
    assert g.input_shape == (1, 4, 4) and g.test[0][0].shape == (1, 4, 4)


def test_image_folder_errors(tmp_path: Path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(DatasetError, match="no class subfolders"):
        load_dataset(str(tmp_path / "empty"))
    with pytest.raises(DatasetError, match="no such image folder"):
        load_dataset(str(tmp_path / "nowhere/"))
    image_folder(tmp_path / "half", split=False)
    (tmp_path / "half" / "train").mkdir()
    with pytest.raises(DatasetError, match="has train/ but no test/"):
        load_dataset(str(tmp_path / "half"))
    image_folder(tmp_path / "extra")
    save_png(tmp_path / "extra" / "test" / "zebra" / "0.png", np.zeros((6, 6), np.uint8))
    with pytest.raises(DatasetError, match="zebra have no counterpart in train"):
        load_dataset(str(tmp_path / "extra"))
    image_folder(tmp_path / "sizes")
    save_png(tmp_path / "sizes" / "train" / "dog" / "999.png", np.zeros((9, 6), np.uint8))
    with pytest.raises(DatasetError, match=r"999.png: image is 9x6 but the first image 6x6; give loader_args.size"):
        load_dataset(str(tmp_path / "sizes"), val_fraction=0.0)  # the stats sample reads every train image
    with pytest.raises(DatasetError, match="unknown option.*colour"):
        load_dataset(str(tmp_path / "sizes"), loader_args={"colour": 1})


# ---- loaders by import path -----------------------------------------------------------------


def test_loader_by_import_path_streams_and_splits(tmp_path: Path) -> None:
    s = load_dataset(f"{LOADERS}:load", loader_args={"n_train": 100, "classes": 4}, val_fraction=0.1, limit_train=50, seed=2)
    assert not s.in_memory and s.num_classes == 4 and s.input_shape == (1, 8, 8) and s.mean is None
    val_idx, train_idx = val_train_indices(100, 0.1, 2)
    assert s.train.indices == train_idx[:50].tolist() and s.val.indices == val_idx.tolist()  # type: ignore[attr-defined]
    assert load_dataset(f"{LOADERS}:load_plain").num_classes == 4  # by a pass over the labels


@pytest.mark.parametrize(
    "name, err, match",
    [
        ("tests.usercode.nosuch:load", DatasetError, "cannot import module 'tests.usercode.nosuch'"),
        (f"{LOADERS}:nosuch", DatasetError, "has no attribute 'nosuch'"),
        ("tests.usercode.broken:load", DatasetError, "importing module 'tests.usercode.broken' raised RuntimeError"),
        (f"{LOADERS}:load_no_datasets", DatasetError, r"returned list; expected \(train, test\)"),
        (f"{LOADERS}:load_bad_labels", DatasetError, "test label 5 is outside 0..2"),
    ],
)
def test_loader_errors(name: str, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        load_dataset(name)


# ---- models by import path ------------------------------------------------------------------


def test_user_models_get_what_they_ask_for() -> None:
    m = make_model(f"{NETS}:tiny_cnn", 5, (3, 8, 8), {"width": 4})
    assert m[0].in_channels == 3 and m[0].out_channels == 4 and m[-1].out_features == 5
    mlp = make_model(f"{NETS}:TinyMLP", 7, (1, 4, 6), {"hidden": 9})
    assert mlp.fc1.in_features == 24 and mlp.fc2.out_features == 7
    assert make_model(f"{NETS}:fixed_head", 10, (1, 2, 2))[-1].in_features == 4
    assert make_model("lenet", 10, (1, 8, 8)) is not None  # the zoo goes through the same door


@pytest.mark.parametrize(
    "name, args, err, match",
    [
        ("tests.usercode.nope:f", {}, ImportPathError, "cannot import module"),
        (f"{NETS}:missing", {}, ImportPathError, "has no attribute 'missing'"),
        (f"{NETS}:NOT_CALLABLE", {}, ImportPathError, "int is not callable"),
        (f"{NETS}:not_a_model", {}, UserModelError, "returned str, not a torch.nn.Module"),
        (f"{NETS}:tiny_cnn", {"num_classes": 3}, UserModelError, "may not set num_classes"),
        (f"{NETS}:tiny_cnn", {"depth": 3}, UserModelError, "cannot be called with"),
        ("lenet", {"hidden": 3}, UserModelError, "import-path model only"),
    ],
)
def test_user_model_errors(name: str, args: dict, err: type, match: str) -> None:
    with pytest.raises(err, match=match):
        make_model(name, 3, (1, 8, 8), args)


# ---- streamed evaluation against the in-memory path -----------------------------------------


class _Streamed(Dataset):
    """The same items as a TensorDataset, but not one: forces the DataLoader path."""

    def __init__(self, ds: TensorDataset) -> None:
        self.ds = ds

    def __len__(self) -> int:
        return len(self.ds)

    def __getitem__(self, i: int):
        x, y = self.ds[i]
        return x, int(y)


@settings(max_examples=15, deadline=None)
@given(n=st.integers(0, 70), batch=st.integers(1, 33), seed=st.integers(0, 2**16))
def test_streamed_evaluation_matches_in_memory(n: int, batch: int, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    ds = TensorDataset(torch.randn(n, 1, 4, 4, generator=g), torch.randint(0, 3, (n,), generator=g))
    torch.manual_seed(seed)
    model = make_model(f"{NETS}:TinyMLP", 3, (1, 4, 4))
    dev = torch.device("cpu")
    p_ref, y_ref = evaluate(model, ds, dev, batch_size=batch)
    p, y = evaluate(model, _Streamed(ds), dev, batch_size=batch)
    assert torch.equal(p, p_ref) and torch.equal(y, y_ref)


def test_streamed_int_predictions_match_in_memory() -> None:
    from qatlab.intmodel import convert
    from qatlab.nn import calibrate, prepare_qat, set_observe
    from qatlab.quant import QuantSpec

    torch.manual_seed(0)
    ds = TensorDataset(torch.randn(45, 1, 6, 6), torch.randint(0, 3, (45,)))
    q = prepare_qat(make_model(f"{NETS}:tiny_cnn", 3, (1, 6, 6)), QuantSpec(bits=8, symmetric=True, granularity="channel", axis=0),
                    QuantSpec(bits=8, symmetric=False), "lsq")  # fmt: skip
    calibrate(q, iter([ds.tensors[0]]), 1)
    set_observe(q, False)
    im = convert(q.eval(), (1, 6, 6))
    ref = int_predictions(im, ds, "cpu")
    assert torch.equal(int_predictions(im, _Streamed(ds), "cpu", batch_size=8), ref) and len(ref) == 45


def test_worker_processes_change_no_batch(tmp_path: Path) -> None:
    from qatlab.train import loader

    image_folder(tmp_path / "imgs", per_class=6)
    s = load_dataset(str(tmp_path / "imgs"), val_fraction=0.0)

    def epoch(workers: int) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return list(loader(s.train, 5, torch.Generator().manual_seed(7), True, num_workers=workers))

    one, two = epoch(0), epoch(2)
    assert len(one) == len(two) == 3
    assert all(torch.equal(a[0], b[0]) and torch.equal(a[1], b[1]) for a, b in zip(one, two))
