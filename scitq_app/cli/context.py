"""What every command shares: the Context (configuration, client, store, printing), the
parser of a command's argv, and argument converters. Imported by the command modules, not by
`cli/__init__` (whose `--help` and `--version` stay light)."""
from __future__ import annotations

import os

from . import COMMON_OPTIONS

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every CLI start (bench/startup.py)
    from typing import Any, Iterable, Mapping, Sequence, TextIO
    from ..config import Config


def _docopt() -> Any:
    from ..errors import MissingDependency
    try:
        from docopt import DocoptExit, docopt
    except ImportError:
        raise MissingDependency("the CLI needs docopt-ng: pip install docopt-ng (bundled in scitq.pyz)") from None
    return docopt, DocoptExit


class Context:
    """What a command needs: configuration, a client, a store, and where to print."""

    def __init__(self, options: Mapping[str, Any], out: TextIO, err: TextIO,
                 env: Mapping[str, str] | None = None, configure_logging: bool = True) -> None:
        self.options = dict(options)
        self.configure_logging = configure_logging
        self.out = out
        self.err = err
        self.env = os.environ if env is None else env
        self._config: Config | None = None

    def flag(self, name: str) -> Any:
        return self.options.get(name)

    def config(self, **flags: Any) -> Config:
        if self._config is None:
            from ..config import load_config
            server, token = self.flag("--server"), self.flag("--token")
            merged = {"client_server": server, "worker_server": server, "client_token": token,
                      "worker_token": token, "log_level": self.flag("--log-level")}
            merged.update(flags)
            self._config = load_config(self.flag("--config"), self.env, merged,
                                       flag_names={"log_level": "--log-level"})
            level = self._config.log.level.upper()
            # Importing logging costs a short command ~10 % of its start (bench/startup.py): those
            # leave it to logging's last resort (warnings and errors, as bare lines on stderr)
            # unless debug is asked for.
            if self.configure_logging or level == "DEBUG":
                import logging
                logging.basicConfig(level=getattr(logging, level), stream=self.err,
                                    format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        return self._config

    def client(self) -> Any:
        from ..client import Server
        cfg = self.config()
        token = cfg.client.token or local_token(cfg.client.server, cfg.client.token_file, self.env)
        return Server(cfg.client.server, token, fingerprint=cfg.client.fingerprint.strip() or None,
                      timeout=cfg.client.timeout)

    def store(self, database: str | None = None) -> Any:
        from ..store import open_store
        cfg = self.config(server_database=database)
        return open_store(cfg.server.database, pool_size=cfg.server.pool_size)

    # --- output -----------------------------------------------------------------
    def say(self, text: str = "") -> None:
        print(text, file=self.out)

    def warn(self, text: str) -> None:
        print(text, file=self.err)

    def json(self, value: Any) -> None:
        import json
        print(json.dumps(value, indent=2, default=str), file=self.out)

    def table(self, rows: Sequence[Mapping[str, Any]], columns: Sequence[tuple[str, str]],
              empty: str = "(none)") -> None:
        """Print rows as aligned columns; columns are (key, header)."""
        if not rows:
            self.say(empty)
            return
        cells = [[_cell(r.get(k)) for k, _ in columns] for r in rows]
        widths = [max(len(h), *(len(c[i]) for c in cells)) for i, (_, h) in enumerate(columns)]
        widths[-1] = 0  # the last column is not padded
        self.say("  ".join(h.upper().ljust(w) for (_, h), w in zip(columns, widths)).rstrip())
        for c in cells:
            self.say("  ".join(v.ljust(w) for v, w in zip(c, widths)).rstrip())


def local_token(server: str, path: str, env: Mapping[str, str] | None = None) -> str | None:
    """For a server on this host when no token is given: the admin token its registry entry
    points to, else [client] token_file (see `tokenfiles`); None when neither is readable."""
    from ..tokenfiles import local_token as find
    return find(server, path, env)


def _cell(v: Any) -> str:
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v)) or "-"
    if isinstance(v, dict):
        return " ".join(f"{k}:{n}" for k, n in v.items()) or "-"
    text = str(v).replace("\n", " ")
    if len(text) == 24 and text.endswith("Z") and text[10] == "T":
        return text[:19].replace("T", " ")
    return text if len(text) <= 60 else text[:57] + "..."


def parse(doc: str, argv: Sequence[str]) -> dict[str, Any]:
    """Parse a command's argv (command first) against its usage doc (plus the common options);
    a mismatch is a UsageError naming the command, with its usage (see `usage.explain`)."""
    _, DocoptExit = _docopt()
    full = doc.rstrip() + "\n" + COMMON_OPTIONS
    try:
        return cached_docopt(full, list(argv))
    except DocoptExit as e:
        from .usage import explain
        raise explain(full, argv, str(e)) from None


def cached_docopt(doc: str, argv: list[str], options_first: bool = False, cache: str | None = None) -> Any:
    """docopt-ng's `docopt(doc, argv, default_help=False, version=None, options_first=...)`, its
    parsed usage read from `cache` (default: the bytecode cache of scitq_app/bytecode.py) when there
    is one: parsing the usage of a command with many subcommands costs more than all of its other
    start-up (~7 ms for `task`), and the usage only changes with the archive. Only a full match
    is answered from the cache; anything else is docopt's own call, so errors are docopt's."""
    import docopt as dd
    from ..bytecode import active_cache
    cache = cache or active_cache()
    parsed = _usage(dd, doc, cache) if cache else None
    if parsed is not None:
        pattern, options = parsed
        try:
            matched, left, collected = pattern.match(dd.parse_argv(dd.Tokens(argv), list(options), options_first))
        except dd.DocoptExit:
            matched, left = False, None
        if matched and left == []:
            return dd.ParsedOptions((a.name, a.value) for a in (pattern.flat() + collected))
    return dd.docopt(doc, argv=argv, default_help=False, version=None, options_first=options_first)


def _usage(dd: Any, doc: str, cache: str) -> Any:
    """(pattern, options) of `doc` as `docopt` builds them before matching: from the cache, or
    parsed and stored there. None if docopt-ng's internals are not the ones this was written for."""
    import pickle
    import zlib
    entry = os.path.join(cache, f"usage-{zlib.crc32(doc.encode()):08x}.pickle")
    try:
        with open(entry, "rb") as f:
            stored_doc, pattern, options = pickle.loads(f.read())
        if stored_doc == doc:  # the key is a checksum: the entry holds the text it was parsed from
            return pattern, options
    except (OSError, ValueError, EOFError, TypeError, AttributeError, ImportError, pickle.UnpicklingError):
        pass  # no entry yet, or a damaged one: parsed again below and stored over it
    try:  # the steps of docopt-ng 0.9's `docopt` up to matching
        sections = dd.parse_docstring_sections(doc)
        dd.lint_docstring(sections)
        options = [*dd.parse_options(sections.before_usage), *dd.parse_options(sections.after_usage)]
        pattern = dd.parse_pattern(dd.formal_usage(sections.usage_body), options)
        pattern_options = set(pattern.flat(dd.Option))
        for shortcut in pattern.flat(dd.OptionsShortcut):
            shortcut.children = [opt for opt in options if opt not in pattern_options]
        pattern.fix()
    except (AttributeError, dd.DocoptLanguageError):
        return None
    try:
        tmp = f"{entry}.{os.getpid()}.tmp"
        with open(tmp, "wb") as f:
            f.write(pickle.dumps((doc, pattern, options), protocol=pickle.HIGHEST_PROTOCOL))
        os.replace(tmp, entry)
    except OSError:
        pass  # a cache that cannot be written costs the next start the parse, nothing else
    return pattern, options


def merge_options(args: Mapping[str, Any], into: Context) -> None:
    """Common options given after the command behave as if given before it."""
    for key in ("--config", "--server", "--token", "--log-level"):
        if args.get(key) and not into.options.get(key):
            into.options[key] = args[key]


def int_arg(value: Any, name: str, minimum: int | None = None) -> int | None:
    from ..errors import UsageError
    if value is None:
        return None
    try:
        n = int(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be an integer, not {value!r}") from None
    if minimum is not None and n < minimum:
        raise UsageError(f"{name} must be at least {minimum}")
    return n


def float_arg(value: Any, name: str, minimum: float | None = None) -> float | None:
    from ..errors import UsageError
    if value is None:
        return None
    try:
        n = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"{name} must be a number, not {value!r}") from None
    if minimum is not None and n < minimum:
        raise UsageError(f"{name} must be at least {minimum:g}")
    return n


def ids_arg(values: Iterable[str], name: str = "<id>") -> list[int]:
    return [int_arg(v, name, 1) for v in values]  # type: ignore[misc]
