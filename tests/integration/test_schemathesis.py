"""schemathesis against a real server, on each backend: every response conforms to the OpenAPI
document the server serves (status codes, content types, response schemas), valid requests are
accepted and invalid ones refused (4xx), never a 5xx.

It runs schemathesis' own `st run` (all its phases: examples, coverage, fuzzing, stateful; all its
default checks) in a subprocess, so its failure report is what the assertion prints, and its
hypothesis machinery stays out of this pytest process (which turns warnings into errors).
"""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from tests.conftest import BACKENDS
from tests.integration.conftest import PREFIX
from tests.support.static_provider import providers_file

pytest.importorskip("schemathesis")

SEED = 20261202
# examples per operation: with ~40 operations and all phases, about a minute per run on 2 cores
EXAMPLES = {"admin": 10, "user": 4}
# DELETE /tokens/{name} revokes tokens: schemathesis would revoke the one it runs with and lock
# itself out (the route's own behaviour, 409 for the last admin token, is tested in test_auth).
EXCLUDED_PATHS = f"^{PREFIX}/tokens/"


@pytest.mark.slow
@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("role", ["admin", "user"])
def test_the_api_conforms_to_its_document(servers, backend, role, tmp_path):
    # one provider that creates nothing: the recruiting routes take valid bodies, and no machine is made
    providers = providers_file(str(tmp_path / "providers.yaml"))
    srv = servers.start(backend, tokens=(("admin", "admin"), ("user", "user")),
                        env={"SCITQ_RECRUIT_PROVIDERS": providers})
    args = [sys.executable, "-m", "schemathesis.cli", "run", f"{srv.api_url}/openapi.json",
            "--header", f"Authorization: Bearer {srv.tokens[role]}",
            "--seed", str(SEED), "--max-examples", str(EXAMPLES[role]),
            "--workers", "1",            # one connection at a time: the same run for a seed
            "--exclude-path-regex", EXCLUDED_PATHS,
            "--request-timeout", "30",    # POST /workers/{id}/claim long-polls up to 60 s when asked
            "--generation-database", "none",   # no examples remembered from earlier runs: the seed decides
            "--report-dir", str(tmp_path / "report"), "--no-color"]
    env = {**os.environ, "NO_COLOR": "1"}
    proc = subprocess.run(args, capture_output=True, text=True, timeout=600, cwd=tmp_path, env=env)
    report = proc.stdout[-20000:] + proc.stderr[-5000:]
    assert proc.returncode == 0, (f"schemathesis found failures ({backend}, {role} token):\n{report}\n"
                                  f"--- server log ---\n{srv.log()[-5000:]}")
