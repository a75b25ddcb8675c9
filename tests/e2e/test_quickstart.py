"""The README's first command, run as a newcomer runs it: ./quickstart.sh builds (or reuses)
the pyz, starts a server on SQLite and a worker, submits its batch in one call, shows the run
and the results. Its time is measured by hand (README), not asserted here."""
from __future__ import annotations

import os
import re
import subprocess

from tests.support.processes import ROOT


def test_the_quickstart_runs_a_batch_end_to_end_and_shows_the_run():
    env = {k: v for k, v in os.environ.items() if not k.startswith("SCITQ_")}
    # as on a terminal: both streams, in order (progress and notes go to stderr)
    r = subprocess.run(["./quickstart.sh", "6"], cwd=ROOT, env=env, stdout=subprocess.PIPE,
                       stderr=subprocess.STDOUT, text=True, timeout=600)
    out = r.stdout
    assert r.returncode == 0, out
    lines = out.splitlines()
    assert "Traceback" not in out
    # the build says one line (or that the pyz is up to date), never pip's or the checker's output
    build = lines.index("==> building dist/scitq.pyz") if "==> building dist/scitq.pyz" in lines else None
    if build is None:
        assert "==> dist/scitq.pyz is up to date" in lines, out
    else:
        assert lines[build + 1].startswith("done     dist/scitq.pyz: ") and lines[build + 2].startswith("==> "), out
    # one submission, then the run, then the results
    assert re.search(r"^  7 tasks submitted, ids \d+-\d+$", out, re.M), out
    running, results = lines.index("==> running"), lines.index("==> results")
    assert lines[running - 1].startswith("  7 tasks submitted")
    shown = lines[running + 1:results]
    assert shown[-1].startswith("done: 7/7 tasks (7 succeeded) in "), out
    assert all(re.fullmatch(r"\d+/7 tasks \(.*\)", ln) for ln in shown[:-1]), shown  # no control codes
    table = lines[lines.index("==> results") + 1:][:2]
    assert table[0].split() == ["NAME", "STATUS", "PRIO", "WORKERS", "TASKS"], table
    assert table[1].split()[:4] == ["quickstart", "running", "0", "1"] and "7 succeeded" in table[1], table
    assert "sample 1 on " in out and "sample 6 on " in out and "second try works" in out
    assert re.search(r"^==> task \d+ \(fails-then-retries\) <==$", out, re.M), out
    demo = re.search(r"logs in (/tmp/scitq-quickstart\.\w+)", out).group(1)
    assert os.path.exists(os.path.join(demo, "server.log")) and os.path.exists(os.path.join(demo, "worker.log"))
