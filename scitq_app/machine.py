"""The host a worker runs on: its size and its live statistics (from /proc)."""
from __future__ import annotations

import errno
import os
import platform
import shutil
import time
from typing import Any, Callable


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read()
    except OSError:
        return ""


def mem_total_bytes() -> int | None:
    for line in _read("/proc/meminfo").splitlines():
        if line.startswith("MemTotal:"):
            return int(line.split()[1]) * 1024
    return None


class Machine:
    """Size and statistics of this host. `stats()` reports rates since its previous call."""

    def __init__(self, workdir: str, clock: Callable[[], float] = time.monotonic) -> None:
        self.workdir = workdir
        self.clock = clock
        self.cpu_count = os.cpu_count() or 1
        self.mem_total = mem_total_bytes()
        self.hostname = platform.node()
        self._cpu = self._cpu_times()
        self._net = self._net_bytes()
        self._disk = self._disk_sectors()
        self._at = clock()

    @staticmethod
    def _cpu_times() -> tuple[int, int, int]:
        first = _read("/proc/stat").splitlines()[:1]
        if not first:
            return (0, 0, 0)
        vals = [int(x) for x in first[0].split()[1:]]
        idle = vals[3] + (vals[4] if len(vals) > 4 else 0)
        iowait = vals[4] if len(vals) > 4 else 0
        return sum(vals), idle, iowait

    @staticmethod
    def _net_bytes() -> tuple[int, int]:
        rx = tx = 0
        for line in _read("/proc/net/dev").splitlines()[2:]:
            name, _, rest = line.partition(":")
            if name.strip() == "lo" or not rest:
                continue
            cols = rest.split()
            rx += int(cols[0])
            tx += int(cols[8])
        return rx, tx

    @staticmethod
    def _disk_sectors() -> tuple[int, int]:
        read = written = 0
        for line in _read("/proc/diskstats").splitlines():
            cols = line.split()
            if len(cols) > 9 and not cols[2].startswith(("loop", "ram", "dm-")) and not cols[2][-1].isdigit():
                read += int(cols[5])
                written += int(cols[9])
        return read, written

    def stats(self) -> dict[str, Any]:
        """load, cpu %, iowait %, mem %, disk usage of the work dir, disk and network rates."""
        now = self.clock()
        elapsed = max(now - self._at, 1e-3)
        cpu, net, disk = self._cpu_times(), self._net_bytes(), self._disk_sectors()
        total = cpu[0] - self._cpu[0]
        out: dict[str, Any] = {}
        if total > 0:
            out["cpu"] = round(100.0 * (1 - (cpu[1] - self._cpu[1]) / total), 1)
            out["iowait"] = round(100.0 * (cpu[2] - self._cpu[2]) / total, 1)
        try:
            out["load"] = [round(x, 2) for x in os.getloadavg()]
        except OSError:
            pass
        meminfo = {ln.split(":")[0]: int(ln.split()[1]) for ln in _read("/proc/meminfo").splitlines()
                   if len(ln.split()) >= 2 and ln.split()[1].isdigit()}
        if meminfo.get("MemTotal"):
            avail = meminfo.get("MemAvailable", meminfo.get("MemFree", 0))
            out["mem"] = round(100.0 * (1 - avail / meminfo["MemTotal"]), 1)
        try:
            usage = shutil.disk_usage(self.workdir)
            out["disk"] = round(100.0 * usage.used / usage.total, 1)
            out["disk_free_gb"] = round(usage.free / 2**30, 1)
        except OSError:
            pass
        out["net_rx_mbs"] = round((net[0] - self._net[0]) / elapsed / 1e6, 3)
        out["net_tx_mbs"] = round((net[1] - self._net[1]) / elapsed / 1e6, 3)
        out["disk_read_mbs"] = round((disk[0] - self._disk[0]) * 512 / elapsed / 1e6, 3)
        out["disk_write_mbs"] = round((disk[1] - self._disk[1]) * 512 / elapsed / 1e6, 3)
        self._cpu, self._net, self._disk, self._at = cpu, net, disk, now
        return out


def disk_shortage(root: str, min_free_gib: float, min_free_inodes: int) -> str | None:
    """What the disk holding `root` lacks under [worker] min_free (GiB) / min_free_inodes, in
    words; None when it has both."""
    try:
        st = os.statvfs(root)
    except OSError as e:
        return f"a readable work dir ({e.strerror or e})"
    free, need = st.f_bavail * st.f_frsize, int(min_free_gib * 2**30)
    full = f"{os.strerror(errno.ENOSPC)}: " if free < 2**20 else ""
    if free < need:
        return f"disk space ({full}{_size(free)} free on {root}, under [worker] min_free {_size(need)})"
    if st.f_files and st.f_favail < min_free_inodes:
        full = f"{os.strerror(errno.ENOSPC)}: " if st.f_favail == 0 else ""
        return f"inodes ({full}{st.f_favail} free on {root}, under [worker] min_free_inodes {min_free_inodes})"
    return None


def _size(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"
