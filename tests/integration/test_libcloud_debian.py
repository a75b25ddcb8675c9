"""The libcloud providers work with the libcloud a Debian server has (python3-libcloud, which
`install.sh server` installs; 3.4 on Debian 12) as well as with PyPI's: their contract tests run
again, in a child pytest that imports Debian's copy first."""
from __future__ import annotations

import os
import subprocess
import sys

from tests.support.system import need

DEBIAN = "/usr/lib/python3/dist-packages/libcloud"


def test_the_provider_contract_tests_pass_with_debians_libcloud(tmp_path):
    need(os.path.isdir(DEBIAN), "Debian's python3-libcloud is not installed (tests/run.sh installs it)")
    need(os.geteuid() == 0, "the fake Azure listens on port 443: needs root")
    (tmp_path / "libcloud").symlink_to(DEBIAN)  # Debian's libcloud alone, not the rest of dist-packages
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    root = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    which = subprocess.run([sys.executable, "-c", "import libcloud; print(libcloud.__file__, libcloud.__version__)"],
                           env=env, capture_output=True, text=True, timeout=60, cwd=root)
    path, version = which.stdout.split()
    assert os.path.realpath(path).startswith(os.path.realpath(DEBIAN)), "the child imports Debian's libcloud"
    run = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                          "tests/integration/test_openstack_provider.py", "tests/integration/test_azure_provider.py"],
                         env=env, capture_output=True, text=True, timeout=300, cwd=root)
    assert run.returncode == 0, f"with libcloud {version}:\n" + run.stdout[-3000:] + run.stderr[-2000:]
    assert " passed" in run.stdout and "skipped" not in run.stdout, run.stdout[-2000:]
