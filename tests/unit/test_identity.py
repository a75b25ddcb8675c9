"""A worker's saved identity (state.json): replaced whole, private, and only its own is used."""
from __future__ import annotations

import os
import stat

from scitq_app.identity import IdentityFile, is_own


def test_a_saved_identity_is_read_back_and_private(tmp_path):
    f = IdentityFile(str(tmp_path))
    assert f.load() == {}
    state = {"server": "https://s:8000", "name": "w1", "worker_id": 7, "token": "t", "lease": 30.0}
    f.save(state)
    assert f.load() == state
    assert stat.S_IMODE(os.stat(f.path).st_mode) == 0o600
    assert os.listdir(tmp_path) == ["state.json"], "no temporary file left behind"


def test_an_unreadable_or_foreign_identity_is_none_of_this_workers(tmp_path):
    f = IdentityFile(str(tmp_path))
    for text in ("{not json", "[1, 2]", ""):
        with open(f.path, "w") as out:
            out.write(text)
        assert f.load() == {}
    mine = {"server": "https://s:8000", "name": "w1", "worker_id": 7, "token": "t"}
    assert is_own(mine, "https://s:8000", "w1")
    assert not is_own(mine, "https://other:8000", "w1")
    assert not is_own(mine, "https://s:8000", "w2")
    assert not is_own({**mine, "token": ""}, "https://s:8000", "w1")
    assert not is_own({**mine, "worker_id": None}, "https://s:8000", "w1")
