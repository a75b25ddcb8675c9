"""A per-user cache of what the CLI compiles at every start: the bytecode of the modules it
imports from scitq.pyz, and the parsed usage of its commands.

Python cannot write `.pyc` files into a zip, so zipimport compiles each module's source at
every start: in CPython 3.11 twice, once to answer `get_filename` and once in `get_code`. The
pyz deliberately holds no bytecode (one archive for every CPython >= 3.10, built
reproducibly), so that compiling is most of what a CLI command costs to start (measured by
bench/startup.py). This module keeps the compiled code of each module imported from the
archive under `$XDG_CACHE_HOME/scitq/bytecode/` (default `~/.cache`), keyed by the archive
(path, size, modification time) and the interpreter's cache tag: a new pyz or another Python
gets its own entries, and a module's source is compiled once per user instead of once per
command.

The cache is used only when it is safe and cheap: Python may write bytecode
(`PYTHONDONTWRITEBYTECODE` not set), the directory is the user's own and not writable by
others, and every failure to read or write an entry falls back to zipimport's own work. It is
a `zipimporter` subclass, so resources (the SQL files) are read from the archive as before.

The same directory keeps each command's usage as docopt-ng parses it (`cli/context.py`).

This module sits outside `scitq_app.cli` so that the archive's `__main__.py` installs the cache
before the CLI's own package is loaded: what is compiled at every start is this module and
`scitq_app/__init__.py` only.
"""
from __future__ import annotations

import marshal
import os
import sys
import zipimport
import zlib

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs a few ms at every start: only for the type checker
    from typing import Mapping, Sequence

# Short-lived commands people type often: their start-up is worth a bytecode cache in the user's
# home. Not the services (server, dispatcher, worker run: they start once) nor what install.sh
# runs as the service user (db, token), whose home must stay as install.sh made it.
CACHED_COMMANDS = frozenset({"launch", "task", "batch", "execution", "worker", "fetch", "config", "job",
                             "host-key"})


def short_lived(argv: Sequence[str]) -> bool:
    """A command people type often and that ends at once (a CACHED_COMMANDS one, not `worker run`)."""
    return bool(argv) and argv[0] in CACHED_COMMANDS and argv[1:2] != ["run"]


class CachingZipImporter(zipimport.zipimporter):
    """zipimporter whose compiled code is kept in `cache` (a directory)."""

    cache = ""

    def get_filename(self, fullname: str) -> str:
        # zipimporter's own compiles the module to learn its path; the archive's table of
        # contents is enough (is_package raises ZipImportError for a module it does not hold)
        tail = fullname.rpartition(".")[2]
        inner = tail + ("/__init__.py" if self.is_package(fullname) else ".py")
        return f"{self.archive}{os.sep}{self.prefix}{inner}"

    def get_code(self, fullname: str):
        entry = os.path.join(self.cache, fullname + ".pyc")
        try:
            with open(entry, "rb") as f:
                return marshal.loads(f.read())
        except (OSError, ValueError, EOFError, TypeError):
            pass
        code = super().get_code(fullname)
        try:
            tmp = f"{entry}.{os.getpid()}.tmp"
            with open(tmp, "wb") as f:
                f.write(marshal.dumps(code))
            os.replace(tmp, entry)  # whole or absent: a reader never sees half an entry
        except OSError:
            pass
        return code


def _forget_older(tagged: str, where: str, keep: str) -> None:
    """Remove the entries of earlier versions of the same archive (a replaced pyz)."""
    import shutil
    for name in os.listdir(tagged):
        path = os.path.join(tagged, name)
        if name.startswith(where) and path != keep:
            shutil.rmtree(path, ignore_errors=True)


def install(env: Mapping[str, str] = os.environ) -> str | None:
    """Route imports from the archive this package was loaded from through the cache; the
    cache directory, or None when scitq does not run from a zip or the cache is not usable.
    Installing twice is installing once."""
    installed = active_cache()
    if installed:
        return installed
    spec = getattr(sys.modules.get(__package__.partition(".")[0]), "__spec__", None)
    package_loader = getattr(spec, "loader", None)
    if not isinstance(package_loader, zipimport.zipimporter) or sys.dont_write_bytecode:
        return None
    archive = package_loader.archive
    try:
        st = os.stat(archive)
        base = env.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
        where = f"{zlib.crc32(os.path.realpath(archive).encode()):08x}-"
        tagged = os.path.join(base, "scitq", "bytecode", sys.implementation.cache_tag or "python")
        cache = os.path.join(tagged, f"{where}{st.st_size}-{st.st_mtime_ns}")
        if not os.path.isdir(cache):
            os.makedirs(cache, mode=0o700, exist_ok=True)
            _forget_older(tagged, where, cache)
        for d in (os.path.join(base, "scitq"), cache):
            info = os.stat(d)
            if info.st_uid != os.getuid() or info.st_mode & 0o022:
                return None  # someone else could plant code there
    except OSError:
        return None

    def hook(path: str) -> CachingZipImporter:
        if path != archive and not path.startswith(archive + os.sep):
            raise ImportError("not in scitq's archive")
        importer = CachingZipImporter(path)
        importer.cache = cache
        return importer

    hook.scitq_cache = cache  # type: ignore[attr-defined]  # how `active_cache` finds it
    sys.path_hooks.insert(0, hook)
    for path, importer in list(sys.path_importer_cache.items()):
        if isinstance(importer, zipimport.zipimporter) and importer.archive == archive:
            sys.path_importer_cache[path] = hook(path)
    return cache


def active_cache() -> str | None:
    """The cache directory `install` routed this process's imports through, or None."""
    for hook in sys.path_hooks:
        cache = getattr(hook, "scitq_cache", None)
        if cache:
            return cache
    return None

