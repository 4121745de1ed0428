"""Atomic outputs get one file mode: what a plain open()/mkdir gives under the process's umask."""

from __future__ import annotations

import os
import stat

import pytest

from guidegen.io.atomic import atomic_dir, atomic_file, write_text


@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_outputs_get_the_umasks_mode(tmp_path, umask):
    old = os.umask(umask)
    try:
        with atomic_dir(tmp_path / "case") as tmp:
            (tmp / "report.txt").write_text("plain open()")
        with atomic_file(tmp_path / "case" / "ct.nii.gz", overwrite=False) as tmp:
            tmp.write_bytes(b"x")
        write_text(tmp_path / "case.json", "{}")
        plain = tmp_path / "plain"
        plain.write_text("reference")
    finally:
        os.umask(old)
    mode = lambda p: stat.S_IMODE(p.stat().st_mode)  # noqa: E731
    assert mode(tmp_path / "case") == 0o777 & ~umask
    for path in (tmp_path / "case" / "ct.nii.gz", tmp_path / "case.json", tmp_path / "case" / "report.txt"):
        assert mode(path) == mode(plain) == 0o666 & ~umask, path
