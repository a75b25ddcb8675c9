"""Fixtures shared by the end-to-end tests."""
from __future__ import annotations

import pytest

from tests.support.cluster import Cluster


@pytest.fixture
def cluster(database_url, tmp_path):
    """A running server on the backend under test; workers are added by each test.
    On failure, the tail of every process log is printed."""
    c = Cluster(database_url, str(tmp_path)).start()
    try:
        yield c
    except BaseException:
        print(c.diagnostics())
        raise
    finally:
        c.stop()
