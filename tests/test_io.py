"""Atomic writes: a failed write leaves the old file and no temp behind; permissions as open() gives."""
import os

import pytest

from babylm_ds.utils.io import atomic_path, atomic_write_json, sha256_file


def test_failed_write_keeps_old_file(tmp_path):
    path = tmp_path / "m.json"
    atomic_write_json(path, {"a": 1})
    good = sha256_file(path)
    with pytest.raises(RuntimeError):
        with atomic_path(path) as tmp, open(tmp, "w") as f:
            f.write("half")
            raise RuntimeError("killed")
    assert sha256_file(path) == good and os.listdir(tmp_path) == ["m.json"]


def test_mode_follows_umask(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write_json(tmp_path / "m.json", {})
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "m.json").st_mode & 0o777 == 0o644
