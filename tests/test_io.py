"""Crash-safe writes: fsync order around the rename, the umask's file mode, no leftovers."""

from __future__ import annotations

import os
import stat

import pytest

from visattn import _io
from visattn._io import append_text, atomic_write, atomic_write_text


@pytest.fixture
def umask():
    """Set a umask for one test and restore the caller's."""
    old = os.umask(0o022)
    yield lambda mask: os.umask(mask)
    os.umask(old)


def _spy(monkeypatch):
    """Record fsyncs (by inode) and renames in the order they happen."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.fstat(fd).st_ino))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.stat(src).st_ino))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    return events


def test_file_is_fsynced_before_and_folder_after_the_rename(tmp_path, monkeypatch):
    events = _spy(monkeypatch)
    target = tmp_path / "config.yaml"
    atomic_write_text(target, "a: 1\n")
    file_ino, dir_ino = target.stat().st_ino, tmp_path.stat().st_ino
    assert events == [("fsync", file_ino), ("replace", file_ino), ("fsync", dir_ino)]
    assert target.read_text() == "a: 1\n"


@pytest.mark.parametrize("mask, mode", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_files_get_the_mode_of_the_umask(tmp_path, umask, mask, mode):
    umask(mask)
    text, blob, own = tmp_path / "metrics.csv", tmp_path / "figure.png", tmp_path / "last.safetensors"
    atomic_write_text(text, "x\n")
    atomic_write(blob, lambda tmp: tmp.write_bytes(b"\0" * 8))  # a writer that reopens by path

    def private(tmp):  # a writer that makes a file of its own, as safetensors does (0o600)
        tmp.unlink()
        os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))

    atomic_write(own, private)
    for path in (text, blob, own):
        assert stat.S_IMODE(path.stat().st_mode) == mode, path


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write_text(target, "old")

    def broken(tmp):
        tmp.write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        atomic_write(target, broken)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_append_is_fsynced(tmp_path, monkeypatch):
    target = tmp_path / "metrics.csv"
    atomic_write_text(target, "epoch\n")
    events = _spy(monkeypatch)
    append_text(target, "1\n")
    assert events == [("fsync", target.stat().st_ino)]
    assert target.read_text() == "epoch\n1\n"


def test_temporary_names_never_collide(tmp_path, monkeypatch):
    # the first two random names are taken: the third is used, nothing is overwritten
    names = iter(["aaaa", "aaaa", "bbbb"])
    monkeypatch.setattr(_io.secrets, "token_hex", lambda n: next(names))
    (tmp_path / ".f.aaaa.tmp").write_text("someone else's")
    atomic_write_text(tmp_path / "f", "mine")
    assert (tmp_path / ".f.aaaa.tmp").read_text() == "someone else's"
    assert (tmp_path / "f").read_text() == "mine"
