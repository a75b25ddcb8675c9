"""What a test needs from this machine, said once: `need(ok, reason)` skips the test on a
developer's machine that lacks the part, and fails it where tests/run.sh installed the part
(SCITQ_TEST_REQUIRE_SYSTEM=1, as in CI), so a missing part can never pass as a skip there."""
from __future__ import annotations

import os

import pytest


def need(ok: bool, reason: str) -> None:
    if ok:
        return
    if os.environ.get("SCITQ_TEST_REQUIRE_SYSTEM") == "1":
        pytest.fail(f"{reason} (required: SCITQ_TEST_REQUIRE_SYSTEM=1, tests/run.sh provides it)")
    pytest.skip(reason)
