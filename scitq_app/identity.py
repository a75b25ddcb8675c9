"""A worker's identity between its runs: `state.json` in its state dir (mode 600).

Written when the worker registers or adopts a worker token; read when it starts again, to
re-attach with its own token (not [worker] token or a join token), keep the certificate it
pinned, and tell its supervisors the lease they were told before. A file of another server or
another worker name is not this worker's and is ignored.
"""
from __future__ import annotations

import json
import os
from typing import Any


class IdentityFile:
    """The worker's `state.json`: a JSON object, replaced whole (never half-written)."""

    def __init__(self, state_dir: str) -> None:
        self.path = os.path.join(state_dir, "state.json")

    def load(self) -> dict[str, Any]:
        """What was saved, or {} when there is nothing readable."""
        try:
            with open(self.path, encoding="utf-8") as f:
                state = json.load(f)
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def save(self, state: dict[str, Any]) -> None:
        fd = os.open(self.path + ".tmp", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            json.dump(state, f)
        os.replace(self.path + ".tmp", self.path)


def is_own(state: dict[str, Any], server_url: str, name: str) -> bool:
    """Does `state` hold a credential of worker `name` on the server at `server_url`?"""
    return bool(state.get("server") == server_url and state.get("name") == name
                and state.get("token") and state.get("worker_id"))
