"""The progress convention of every long command: `join` (`scitq task wait`), `fetch`, and
those to come (provisioning, workflows).

The contract has two halves.

**Producers** (library code: `client.Server.join`, `storage.Rclone.transfer` through `fetch`,
provisioning steps...) never print. They take an `on_event: Callable[[dict], None]` and call it
with plain, JSON-serialisable dicts. Every event has `event` and `what` (the thing progressing,
e.g. "tasks", "transfer", "provision worker-3"); by kind:

- `{"event": "progress", "what", "unit", "done", "total", ...}`: how far. `unit` is "tasks",
  "bytes", "steps" or another countable noun; `total` may be None when unknown. Optional:
  `detail` (a dict of named counts, e.g. tasks by status), `rate` (units per second), `eta`
  (seconds), `elapsed` (seconds), `files` ("3/10"), `note` (the step under way, in words),
  `name` (a short label shown first when several things progress at once: provisioning's host).
  Emit it whenever something is known to have changed, or about once a second: the renderer
  decides what to show and how often.
- `{"event": "message", "what", "text"}`: one step worth a line of its own ("copying scitq.pyz").
- `{"event": "outage", "what", "error", "retry_in"}`: the server (or the remote) cannot be
  reached; the producer retries by itself after `retry_in` seconds. Emit it on each failed try.
- `{"event": "resumed", "what"}`: reachable again after an outage.
- `{"event": "done", "what", ...}`: the end, with the same keys as the last `progress`.

**Consumers**: only `cli/` renders events, through `Progress` (build it with `for_command`):
- on a terminal (stderr is a TTY): one bar redrawn in place, `[######....] 12/31 tasks  ...`
  (one per `what` when several progress at once, e.g. one per host), and a new line for
  messages, outages and each end;
- otherwise (a pipe, a log file, systemd): plain lines without control codes, one per `what`
  when its figures changed and at least `every` seconds (10 s) went by, plus every message,
  outage, resumption and end;
- with `--json`: each event as one JSON line on stdout, untouched, for scripts;
- during an outage, "server unreachable, retrying (...)" once, then again at most every
  `every` seconds, and "server reachable again" when it is.

A new long command takes `--json` (events) and passes `for_command(ctx, json=...)` as the
producer's `on_event`; it closes the Progress when done (`with for_command(...) as progress:`).
"""
from __future__ import annotations

import json as _json
import time
from typing import Any, Callable, TextIO

BAR_WIDTH = 24


class Progress:
    """Renders progress events (see the module docstring) in one of three modes:
    "bar" (a terminal), "lines" (plain periodic lines) or "json" (JSON lines on `out`)."""

    def __init__(self, err: TextIO, mode: str = "lines", out: TextIO | None = None, every: float = 10.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        if mode not in ("bar", "lines", "json"):
            raise ValueError(f"unknown progress mode {mode!r}")
        self.err = err
        self.out = out if out is not None else err
        self.mode = mode
        self.every = every
        self.clock = clock
        self._bars: dict[str, str] = {}  # what -> its bar line, in the order they came
        self._block = 0                  # lines of bars on screen (the cursor ends the last one)
        self._last_line: dict[str, str] = {}
        self._last_time: dict[str, float] = {}
        self._outage_time: float | None = None

    def __call__(self, event: dict) -> None:
        if self.mode == "json":
            self.out.write(_json.dumps(event, separators=(",", ":"), default=str) + "\n")
            self.out.flush()
            return
        kind = event.get("event")
        now = self.clock()
        what = str(event.get("what", ""))
        name = f"{event['name']}  " if event.get("name") else ""
        if kind == "progress":
            line = describe(event)
            if self.mode == "bar":
                self._draw(what, name + bar(event) + "  " + line)
            elif line != self._last_line.get(what) and now - self._last_time.get(what, -1e18) >= self.every:
                self._line(name + line)
                self._last_line[what], self._last_time[what] = line, now
        elif kind == "done":
            self._bars.pop(what, None)
            self._line(name + "done: " + describe(event) +
                       (f" in {duration(event['elapsed'])}" if "elapsed" in event else ""))
        elif kind == "outage":
            if self._outage_time is None or now - self._outage_time >= self.every:
                self._line(f"server unreachable, retrying ({event.get('error', 'no answer')})")
                self._outage_time = now
        elif kind == "resumed":
            if self._outage_time is not None:
                self._line("server reachable again")
            self._outage_time = None
        elif kind == "message":
            self._line(str(event.get("text", "")))

    def close(self) -> None:
        """End the bars left on screen (nothing to do in the other modes)."""
        if self._block:
            self.err.write("\n")
            self.err.flush()
            self._block = 0
        self._bars.clear()

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _draw(self, what: str, text: str) -> None:
        self._bars[what] = text
        if len(self._bars) == 1 and self._block <= 1:
            self.err.write("\r" + text + "\x1b[K")  # one bar: redrawn in place
        else:
            self._clear()
            self.err.write("\n".join(self._bars.values()))
        self._block = len(self._bars)
        self.err.flush()

    def _clear(self) -> None:
        """Erase the bars on screen; the cursor goes where the first one began."""
        if self._block > 1:
            self.err.write(f"\r\x1b[{self._block - 1}A\x1b[J")
        elif self._block == 1:
            self.err.write("\r\x1b[K")
        self._block = 0

    def _line(self, text: str) -> None:
        self._clear()  # the bars come back below at their next progress
        self.err.write(text + "\n")
        self.err.flush()


def for_command(ctx: Any, json: bool = False, show: bool | None = None, every: float = 10.0) -> Progress | None:
    """The renderer a command uses: JSON lines on stdout with `json`; else a bar when stderr
    is a terminal, plain lines when not. `show=False` (a `--no-progress`) gives None; `show`
    None or True shows progress (commands whose progress is opt-in off a terminal, like
    `fetch`, pass `show=tty or --progress`)."""
    if json:
        return Progress(ctx.err, "json", out=ctx.out)
    if show is False:
        return None
    tty = bool(getattr(ctx.err, "isatty", lambda: False)())
    return Progress(ctx.err, "bar" if tty else "lines", every=every)


def describe(event: dict) -> str:
    """`12/31 tasks (2 running, 10 succeeded)`, ` 15%  1.5 MiB / 10.0 MiB  2.1 MiB/s  ETA 4s`."""
    unit = event.get("unit", "")
    done, total = event.get("done", 0), event.get("total")
    if unit == "bytes":
        text = (f"{100 * done // total:3d}%  " if total else "") + \
            f"{human_bytes(done)} / {human_bytes(total) if total else '?'}"
        if event.get("rate") is not None:
            text += f"  {human_bytes(event['rate'])}/s"
        if isinstance(event.get("eta"), (int, float)):
            text += f"  ETA {duration(event['eta'])}"
        if event.get("files"):
            text += f"  files {event['files']}"
    else:
        text = f"{done}/{total if total is not None else '?'} {unit}".rstrip()
    detail = event.get("detail")
    if detail:
        text += " (" + ", ".join(f"{n} {k}" for k, n in detail.items()) + ")"
    if event.get("note"):
        text += f"  {event['note']}"
    return text


def bar(event: dict, width: int = BAR_WIDTH) -> str:
    total, done = event.get("total"), event.get("done", 0)
    if not total:
        return "[" + "?" * width + "]"
    filled = min(width, int(width * done / total))
    return "[" + "#" * filled + "." * (width - filled) + f"] {100 * done // total:3d}%"


def human_bytes(n: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"


def duration(seconds: float) -> str:
    s = int(seconds)
    if s >= 3600:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    if s >= 60:
        return f"{s // 60}m{s % 60:02d}s"
    return f"{seconds:.1f}s" if seconds < 10 else f"{s}s"
