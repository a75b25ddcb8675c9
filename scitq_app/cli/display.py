"""How one object reads on a terminal: `show` commands print aligned `key: value` fields, with
lists, counts, times and worker stats formatted for people (`--json` gives the raw object)."""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every CLI start (bench/startup.py)
    from typing import Any, Callable, Iterable, Mapping

HIDDEN: tuple[Any, ...] = (None, "", [], {}, ())


def fields(say: Callable[[str], None], obj: Mapping[str, Any], keys: Iterable[str] | None = None,
           always: Iterable[str] = ("id", "name", "status"),
           formats: Mapping[str, Callable[[Any], str]] | None = None) -> None:
    """Print `key: value` lines aligned on the longest key shown; empty values are left out
    unless in `always`."""
    keys = list(obj) if keys is None else [k for k in keys if k in obj]
    keep = set(always)
    shown = [k for k in keys if k in keep or obj.get(k) not in HIDDEN]
    width = max((len(k) for k in shown), default=0) + 1
    for k in shown:
        fmt = (formats or {}).get(k, value)
        text = fmt(obj.get(k))
        lines = text.split("\n")
        say(f"{k + ':':<{width}} {lines[0]}".rstrip())
        for more in lines[1:]:
            say(f"{'':<{width}} {more}".rstrip())


def value(v: Any) -> str:
    """A field's value: lists joined, dicts as `key value` pairs, ISO times without the T."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ", ".join(value(x) for x in v) or "-"
    if isinstance(v, dict):
        return ", ".join(f"{k} {value(n)}" for k, n in v.items()) or "-"
    text = str(v)
    if len(text) in (20, 24) and text.endswith("Z") and text[10:11] == "T":
        return text[:19].replace("T", " ")
    return text


def counts(c: Mapping[str, int] | None) -> str:
    """Task counts by status: `12 succeeded, 3 running` (largest first); `none` when empty."""
    if not c:
        return "none"
    return ", ".join(f"{n} {s}" for s, n in sorted(c.items(), key=lambda kv: (-kv[1], kv[0])))


def stats(s: Mapping[str, Any] | None) -> str:
    """A worker's heartbeat stats (machine.py) as one line per kind of resource."""
    if not s:
        return "-"
    s = dict(s)
    lines = []
    if "load" in s:
        load = s.pop("load")
        lines.append("load   " + (" ".join(f"{x:g}" for x in load) if isinstance(load, list) else value(load)))
    cpu = [f"{s.pop(k):g}% {k}" for k in ("cpu", "iowait") if isinstance(s.get(k), (int, float))]
    if cpu:
        lines.append("cpu    " + ", ".join(cpu))
    if isinstance(s.get("mem"), (int, float)):
        lines.append(f"mem    {s.pop('mem'):g}% used")
    if isinstance(s.get("disk"), (int, float)):
        free = s.pop("disk_free_gb", None)
        lines.append(f"disk   {s.pop('disk'):g}% used" + (f", {free:g} GiB free" if free is not None else ""))
    io = [(label, s.pop(a, None), s.pop(b, None)) for label, a, b in
          (("net    ", "net_rx_mbs", "net_tx_mbs"), ("disk io", "disk_read_mbs", "disk_write_mbs"))]
    for label, a, b in io:
        if a is not None or b is not None:
            words = ("in", "out") if label.startswith("net") else ("read", "write")
            lines.append(f"{label} {a or 0:g} MB/s {words[0]}, {b or 0:g} MB/s {words[1]}")
    lines.extend(f"{k} {value(v)}" for k, v in s.items())
    return "\n".join(lines)
