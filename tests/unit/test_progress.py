"""The progress renderer of the CLI (scitq_app/cli/progress.py): a bar on a terminal, plain
periodic lines elsewhere, JSON lines on request, and what an outage looks like in each."""
from __future__ import annotations

import io
import json

from scitq_app.cli.progress import Progress, describe, for_command


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def tasks(done: int, total: int, **detail: int) -> dict:
    return {"event": "progress", "what": "tasks", "unit": "tasks", "done": done, "total": total, "detail": detail}


def test_plain_lines_come_at_most_every_period_and_only_when_something_changed():
    err, clock = io.StringIO(), Clock()
    p = Progress(err, "lines", every=10, clock=clock)
    p(tasks(0, 4, pending=4))
    clock.now = 3
    p(tasks(1, 4, pending=3, succeeded=1))   # too soon after the last line
    clock.now = 11
    p(tasks(1, 4, pending=3, succeeded=1))   # due: it changed since the last line shown
    clock.now = 25
    p(tasks(1, 4, pending=3, succeeded=1))   # due but unchanged
    clock.now = 26
    p(dict(tasks(4, 4, succeeded=4), event="done", elapsed=26.0))
    p.close()
    assert err.getvalue().splitlines() == ["0/4 tasks (4 pending)", "1/4 tasks (3 pending, 1 succeeded)",
                                           "done: 4/4 tasks (4 succeeded) in 26s"]
    assert "\r" not in err.getvalue() and "\x1b" not in err.getvalue()


def test_an_outage_is_said_once_per_period_then_its_end():
    err, clock = io.StringIO(), Clock()
    p = Progress(err, "lines", every=10, clock=clock)
    outage = {"event": "outage", "what": "tasks", "error": "cannot reach the scitq server", "retry_in": 1.0}
    for t in (0, 1, 2, 12):
        clock.now = t
        p(outage)
    p({"event": "resumed", "what": "tasks"})
    p({"event": "resumed", "what": "tasks"})  # not after an outage: nothing to say
    assert err.getvalue().splitlines() == ["server unreachable, retrying (cannot reach the scitq server)"] * 2 + [
        "server reachable again"]


def test_a_terminal_gets_one_bar_redrawn_in_place_and_lines_for_the_rest():
    err = Tty()
    p = Progress(err, "bar")
    p(tasks(0, 4, pending=4))
    p(tasks(2, 4, running=2, succeeded=2))
    p({"event": "message", "what": "tasks", "text": "relaunching task 3"})
    p(tasks(4, 4, succeeded=4))
    p.close()
    text = err.getvalue()
    assert text.count("\r[") == 3 and text.endswith("\n")
    assert "\r[############............]  50%  2/4 tasks (2 running, 2 succeeded)\x1b[K" in text
    assert "\r\x1b[Krelaunching task 3\n" in text


def test_json_mode_writes_each_event_as_one_line_on_stdout():
    out, err = io.StringIO(), io.StringIO()
    p = Progress(err, "json", out=out)
    events = [tasks(0, 2, pending=2), {"event": "outage", "what": "tasks", "error": "x", "retry_in": 0.5},
              dict(tasks(2, 2, succeeded=2), event="done")]
    for e in events:
        p(e)
    assert [json.loads(line) for line in out.getvalue().splitlines()] == events and err.getvalue() == ""


def test_bytes_are_described_with_percent_rate_and_eta():
    event = {"event": "progress", "what": "copy", "unit": "bytes", "done": 3 * 2**20, "total": 12 * 2**20,
             "rate": 2**20, "eta": 9, "files": "0/1"}
    assert describe(event) == " 25%  3.0 MiB / 12.0 MiB  1.0 MiB/s  ETA 9.0s  files 0/1"


def test_for_command_picks_the_mode_from_the_terminal_and_the_flags():
    class Ctx:
        def __init__(self, err: io.StringIO) -> None:
            self.err, self.out = err, io.StringIO()
    assert for_command(Ctx(Tty())).mode == "bar"
    assert for_command(Ctx(io.StringIO())).mode == "lines"
    assert for_command(Ctx(Tty()), json=True).mode == "json"
    assert for_command(Ctx(Tty()), show=False) is None


def host(name: str, done: int, note: str, kind: str = "progress") -> dict:
    return {"event": kind, "what": f"provision {name}", "name": name, "unit": "steps", "done": done, "total": 5,
            "note": note}


def _screen(text: str) -> list[str]:
    """What a terminal shows after `text`: carriage return, cursor up (ESC[nA), erase line
    (ESC[K) and erase below (ESC[J) applied to a grid of lines."""
    import re
    lines, row, col = [""], 0, 0
    for token in re.findall(r"\x1b\[(\d*)([AKJ])|(\r)|(\n)|([^\x1b\r\n]+)", text):
        n, code, cr, nl, chars = token
        if code == "A":
            row -= int(n or 1)
        elif code == "K":
            lines[row] = lines[row][:col]
        elif code == "J":
            lines[row] = lines[row][:col]
            del lines[row + 1:]
        elif cr:
            col = 0
        elif nl:
            row += 1
            col = 0
            if row == len(lines):
                lines.append("")
        else:
            lines[row] = lines[row][:col] + chars + lines[row][col + len(chars):]
            col += len(chars)
    return lines


def test_several_hosts_get_a_bar_each_and_their_ends_print_above_the_bars_left():
    err = Tty()
    p = Progress(err, "bar")
    p(host("a", 0, "connecting"))
    p(host("b", 0, "connecting"))
    p(host("a", 2, "uploading"))
    p(host("c", 1, "checking"))
    assert _screen(err.getvalue()) == [
        "a  [#########...............]  40%  2/5 steps  uploading",
        "b  [........................]   0%  0/5 steps  connecting",
        "c  [####....................]  20%  1/5 steps  checking"]
    p(host("b", 5, "worker b registered", kind="done"))
    p(host("a", 3, "installing"))
    p.close()
    assert _screen(err.getvalue()) == [
        "b  done: 5/5 steps  worker b registered",
        "a  [##############..........]  60%  3/5 steps  installing",
        "c  [####....................]  20%  1/5 steps  checking",
        ""]


def test_plain_lines_keep_each_host_s_own_rhythm():
    err, clock = io.StringIO(), Clock()
    p = Progress(err, "lines", every=10, clock=clock)
    p(host("a", 0, "connecting"))
    p(host("b", 0, "connecting"))   # another host: its own first line, not held back by a's
    clock.now = 1
    p(host("a", 1, "checking"))     # too soon for a
    clock.now = 12
    p(host("a", 2, "uploading"))
    assert err.getvalue().splitlines() == ["a  0/5 steps  connecting", "b  0/5 steps  connecting",
                                           "a  2/5 steps  uploading"]
