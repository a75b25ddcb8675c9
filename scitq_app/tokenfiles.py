"""Where the CLI on the server host finds the admin token without configuration.

Two files, both mode 600:

- the **token file** (`[server] token_file`, default `admin.token` in the server's
  working dir): the secret of the admin token the first start on an empty database
  creates, one line. An installed server runs in /var/lib/scitq, so its token file is
  /var/lib/scitq/admin.token, which is `[client] token_file`'s default.
- the **server registry** of the user who runs the server:
  `$XDG_STATE_HOME/scitq/servers/<port>.json` (`~/.local/state/scitq/servers/…`
  without XDG_STATE_HOME), written when the server listens and removed when it
  stops: `{"url": …, "port": …, "pid": …, "token_file": ABSOLUTE PATH}`. It never
  holds a secret, only where the secret is.

`local_token(server_url, token_file)` is the CLI's side: for a server on this
host, the token file the registry names for that port (when its server is still
running), else `[client] token_file`.
"""
from __future__ import annotations

import ipaddress
import json
import os
import socket
from urllib.parse import urlsplit

from .errors import ConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every CLI start (bench/startup.py)
    from typing import Any, Mapping


def write_secret_file(path: str, secret: str) -> str:
    """Write `secret` to `path` (mode 600 from its creation: a fresh O_EXCL temporary
    file renamed over it) and return the absolute path. ConfigError naming the path
    when it cannot be written, so the caller's transaction rolls back."""
    target = os.path.abspath(path)
    folder = os.path.dirname(target)
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        import tempfile
        fd, tmp = tempfile.mkstemp(prefix=".scitq-token-", dir=folder)  # O_EXCL, mode 600
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(secret + "\n")
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, target)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise
    except OSError as e:
        raise ConfigError(f"cannot write the admin token file {target} ([server] token_file): "
                          f"{e.strerror or e}", path=target) from None
    return target


def registry_dir(env: Mapping[str, str] | None = None) -> str:
    """The per-user folder of running servers' entries."""
    env = os.environ if env is None else env
    state = env.get("XDG_STATE_HOME", "")
    if not os.path.isabs(state):  # the XDG spec: a relative value is ignored
        home = env.get("HOME") or os.path.expanduser("~")
        state = os.path.join(home, ".local", "state")
    return os.path.join(state, "scitq", "servers")


def register_server(url: str, port: int, token_file: str, env: Mapping[str, str] | None = None) -> str | None:
    """Record this running server for the CLI of its user; return the entry's path, or
    None (logged) when it cannot be written: the CLI then needs a token or
    [client] token_file, nothing else breaks."""
    folder = registry_dir(env)
    entry = {"url": url, "port": port, "pid": os.getpid(), "token_file": os.path.abspath(token_file)}
    try:
        os.makedirs(folder, mode=0o700, exist_ok=True)
        import tempfile
        fd, tmp = tempfile.mkstemp(prefix=".server-", dir=folder)
        try:
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                json.dump(entry, f)
            path = os.path.join(folder, f"{port}.json")
            os.replace(tmp, path)
        except BaseException:
            os.unlink(tmp)
            raise
    except OSError as e:
        import logging  # only to say this: logging costs milliseconds at every CLI start
        logging.getLogger(__name__).warning("cannot record this server in %s (%s): a CLI on this host needs a token or "
                    "[client] token_file to reach it", folder, e.strerror or e)
        return None
    return path


def unregister_server(port: int, env: Mapping[str, str] | None = None) -> None:
    """Remove this process's registry entry (another process's entry for the port stays)."""
    path = os.path.join(registry_dir(env), f"{port}.json")
    entry = _read_entry(path)
    if entry is not None and entry.get("pid") == os.getpid():
        try:
            os.unlink(path)
        except OSError:
            pass


def _read_entry(path: str) -> dict[str, Any] | None:
    try:
        with open(path, encoding="utf-8") as f:
            entry = json.load(f)
    except (OSError, ValueError):
        return None
    return entry if isinstance(entry, dict) else None


def _alive(pid: Any) -> bool:
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def is_this_host(host: str) -> bool:
    """A loopback address, `localhost`, or one of this host's own names."""
    host = host.lower().rstrip(".")
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        pass
    return host in own_names()


def own_names() -> frozenset[str]:
    """This host's names (gethostname, getfqdn), lowercased."""
    names = {socket.gethostname()}
    try:
        names.add(socket.getfqdn())
    except OSError:
        pass
    return frozenset(n.lower().rstrip(".") for n in names if n)


def _read_secret(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8") as f:
            return f.read().strip() or None
    except (OSError, UnicodeDecodeError):
        return None


def local_token(server: str, token_file: str, env: Mapping[str, str] | None = None) -> str | None:
    """The admin token for a server on this host, or None.

    First the token file this user's registry names for that server (its port, and a
    server process still alive: the exact server asked for, even beside an installed
    one), then `token_file` ([client] token_file, readable by root and the installed
    server's user)."""
    try:
        parts = urlsplit(server)
        host, port = parts.hostname or "", parts.port
    except ValueError:
        return None
    if not host or not is_this_host(host):
        return None
    if port is None:
        port = 443 if parts.scheme == "https" else 80
    entry = _read_entry(os.path.join(registry_dir(env), f"{port}.json"))
    if entry is not None and entry.get("port") == port and _alive(entry.get("pid")) \
            and isinstance(entry.get("token_file"), str):
        secret = _read_secret(entry["token_file"])
        if secret:
            return secret
    return _read_secret(token_file) if token_file else None
