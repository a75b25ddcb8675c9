"""Fixtures shared by the end-to-end tests."""
from __future__ import annotations

import pytest

from tests.support.cluster import Cluster


def _running(database_url: str, tmp_path, env: dict[str, str] | None = None):
    c = Cluster(database_url, str(tmp_path), env=env).start()
    try:
        yield c
    except BaseException:
        print(c.diagnostics())
        raise
    finally:
        c.stop()


@pytest.fixture
def cluster(database_url, tmp_path):
    """A running server on the backend under test; workers are added by each test.
    On failure, the tail of every process log is printed."""
    yield from _running(database_url, tmp_path)


@pytest.fixture
def patient_cluster(database_url, tmp_path):
    """The same with a 10 s lease: a killed agent has 5 s to come back before its tasks' supervisors
    kill them."""
    yield from _running(database_url, tmp_path, {"SCITQ_DISPATCHER_LEASE": "10"})
