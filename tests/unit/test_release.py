"""Installing a scitq.pyz as the new release in install.sh's layout (what `worker upgrade` does on
each worker): the hash and a trial run checked before the link moves, the link swapped
atomically, three releases kept, anything else refused with nothing changed."""
from __future__ import annotations

import hashlib
import io
import os
import sys
import zipfile

import pytest

from scitq_app.errors import ReleaseError
from scitq_app.release import install, layout, version_of


def pyz(version: str, runs: bool = True) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        z.writestr("__main__.py", f"print('scitq {version}')\n" if runs else "raise SystemExit('broken')\n")
        z.writestr("scitq_app/__init__.py", f'__version__ = "{version}"\n')
    return buf.getvalue()


@pytest.fixture
def lib(tmp_path):
    """LIB/scitq.pyz -> LIB/releases/scitq-<hash>.pyz, as install.sh leaves it."""
    releases = tmp_path / "releases"
    releases.mkdir()
    old = pyz("1.0")
    first = releases / f"scitq-{hashlib.sha256(old).hexdigest()[:16]}.pyz"
    first.write_bytes(old)
    os.symlink(first, tmp_path / "scitq.pyz")
    return tmp_path


def test_a_new_release_is_checked_then_linked_and_old_ones_pruned(lib):
    link = str(lib / "scitq.pyz")
    for i, version in enumerate(("2.0", "3.0", "4.0")):
        data = pyz(version)
        os.utime(os.path.realpath(link), (1000 + i, 1000 + i))  # the one it replaces is older
        path = install(data, hashlib.sha256(data).hexdigest(), link, python=sys.executable)
        assert os.path.realpath(link) == path and version_of(link) == version
        assert oct(os.stat(path).st_mode & 0o777) == "0o755"
    kept = sorted(os.listdir(lib / "releases"))
    assert len(kept) == 3 and not any(n.endswith(".new") for n in kept), kept
    assert version_of(link) == "4.0"


def test_a_wrong_hash_or_a_pyz_that_does_not_run_changes_nothing(lib):
    link = str(lib / "scitq.pyz")
    before = (os.path.realpath(link), sorted(os.listdir(lib / "releases")))
    with pytest.raises(ReleaseError, match="does not match its sha256"):
        install(pyz("2.0"), "0" * 64, link)
    broken = pyz("2.0", runs=False)
    with pytest.raises(ReleaseError, match="does not run here"):
        install(broken, hashlib.sha256(broken).hexdigest(), link)
    assert (os.path.realpath(link), sorted(os.listdir(lib / "releases"))) == before


def test_a_pyz_copied_by_hand_is_not_upgraded_in_place(tmp_path):
    (tmp_path / "scitq.pyz").write_bytes(pyz("1.0"))
    with pytest.raises(ReleaseError, match="not install.sh's link"):
        layout(str(tmp_path / "scitq.pyz"))
    data = pyz("2.0")
    with pytest.raises(ReleaseError):
        install(data, hashlib.sha256(data).hexdigest(), str(tmp_path / "scitq.pyz"))
    assert version_of(str(tmp_path / "scitq.pyz")) == "1.0"
