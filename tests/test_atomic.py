"""qatlab.atomic: whole-or-nothing writes whose files get the permissions open() would give."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from qatlab import atomic


def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


@pytest.fixture
def umask():
    """Set the umask for one test and always put the old one back."""
    old = os.umask(0o022)
    os.umask(old)

    def set_(mask: int) -> None:
        os.umask(mask)

    yield set_
    os.umask(old)


@settings(max_examples=25, deadline=None)
@given(mask=st.integers(0, 0o777))
def test_new_file_mode_equals_a_plain_open(tmp_path_factory, mask):
    d = tmp_path_factory.mktemp("m")
    old = os.umask(mask)
    try:
        with open(d / "plain", "w") as f:
            f.write("x")
        atomic.write_text(d / "atomic", "x")
        assert atomic.current_umask() == mask
    finally:
        os.umask(old)
    assert _mode(d / "atomic") == _mode(d / "plain") == 0o666 & ~mask


@pytest.mark.parametrize("mode", [0o600, 0o640, 0o644, 0o755, 0o444])
def test_a_replaced_file_keeps_its_mode(tmp_path, umask, mode):
    umask(0o022)
    p = tmp_path / "out.json"
    p.write_text("old")
    p.chmod(mode)
    atomic.write_json(p, {"a": 1})
    assert _mode(p) == mode
    assert p.read_text() == '{\n "a": 1\n}\n'


def test_umask_is_read_at_write_time_not_import_time(tmp_path, umask):
    umask(0o077)
    atomic.write_bytes(tmp_path / "a", b"1")
    umask(0o002)
    atomic.write_bytes(tmp_path / "b", b"1")
    assert (_mode(tmp_path / "a"), _mode(tmp_path / "b")) == (0o600, 0o664)


def test_reading_the_umask_does_not_change_it(umask):
    umask(0o027)
    assert atomic.current_umask() == 0o027
    assert atomic.new_file_mode() == 0o640
    assert os.umask(0o027) == 0o027


def test_failure_leaves_the_old_file_and_no_temp(tmp_path):
    p = tmp_path / "keep.txt"
    p.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic.atomic_path(p) as tmp:
            tmp.write_text("half")
            raise RuntimeError("writer failed")
    assert p.read_text() == "old"
    assert sorted(x.name for x in tmp_path.iterdir()) == ["keep.txt"]


def test_atomic_path_gives_the_written_file_the_target_mode(tmp_path, umask):
    umask(0o022)
    p = tmp_path / "model.onnx"
    with atomic.atomic_path(p) as tmp:
        assert _mode(tmp) == 0o600  # mkstemp's, until the rename
        tmp.write_bytes(b"onnx")
    assert _mode(p) == 0o644


def test_mkdir_false_needs_the_folder(tmp_path):
    with pytest.raises(FileNotFoundError):
        atomic.write_text(tmp_path / "no" / "such" / "f.txt", "x", mkdir=False)
    atomic.write_text(tmp_path / "made" / "f.txt", "x")
    assert (tmp_path / "made" / "f.txt").read_text() == "x"
