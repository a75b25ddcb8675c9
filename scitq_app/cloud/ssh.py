"""One SSH host, through paramiko: connect with a verified host key, run commands (their output
line by line), upload files (with progress), and nothing else.

Host keys are never ignored. In order: a key the caller pins (a provider's), the user's
known_hosts, then the key scitq recorded for the host in its database, trusted on first use
(`trust(host, key_type, key_b64)` records or refuses atomically, so two first contacts racing
trust one key). A key other than the one known is refused with both fingerprints named.

paramiko is imported here only (lazily by the roles that provision), never by a worker; the
pyz does not bundle it (compiled crypto): Debian's python3-paramiko (2.12) or the PyPI release.
"""
from __future__ import annotations

import os
import shlex
import socket
from typing import TYPE_CHECKING, Any, Callable

from ..errors import Conflict, HostKeyRefused, MissingDependency, ScitqError, SshError
from ..models import key_fingerprint

if TYPE_CHECKING:
    import paramiko

CONNECT_TIMEOUT = 15.0


def _paramiko() -> Any:
    try:
        import paramiko
    except ImportError:
        raise MissingDependency("provisioning needs paramiko: apt-get install python3-paramiko (or pip install "
                          "paramiko) on this machine") from None
    return paramiko


class SshHost:
    """An open SSH session to `host`:`port` as `user` (root, or a user with password-less sudo).

    `host_id` names the host for its recorded key (default HOST:PORT; a provider passes its
    machine id, since addresses are reused after a destroy)."""

    def __init__(self, client: "paramiko.SSHClient", host: str, port: int, user: str) -> None:
        self.client = client
        self.host, self.port, self.user = host, port, user
        self.sudo = "" if user == "root" else "sudo -n "

    @classmethod
    def connect(cls, host: str, port: int = 22, user: str = "root", key_file: str | None = None,
                trust: Callable[[str, str, str], Any] | None = None, known_key: tuple[str, str] | None = None,
                host_id: str | None = None, pinned: tuple[str, str] | None = None,
                timeout: float = CONNECT_TIMEOUT) -> "SshHost":
        """Connect and authenticate with `key_file` (else the user's keys and agent).

        `pinned`: (key_type, base64) the provider gave, the only key accepted. `known_key`: the
        one scitq recorded for `host_id`, enforced. Otherwise, after known_hosts, `trust` is
        called with the offered key (trust on first use; it raises Conflict when it knows
        another)."""
        paramiko = _paramiko()
        host_id = host_id or f"{host}:{port}"
        client = paramiko.SSHClient()
        try:
            client.load_system_host_keys()
        except (OSError, paramiko.SSHException):
            pass  # no known_hosts, or one paramiko cannot read: the database decides
        name = host if port == 22 else f"[{host}]:{port}"
        for key_type, key_b64 in [k for k in (pinned, known_key) if k is not None][:1]:
            # enforced by paramiko, which also asks for this key type first
            entry = paramiko.hostkeys.HostKeyEntry.from_line(f"{name} {key_type} {key_b64}")
            if entry is None or entry.key is None:
                raise HostKeyRefused(f"the key recorded for {host_id} ({key_type}) cannot be read by this paramiko")
            client.get_host_keys().add(name, key_type, entry.key)
        client.set_missing_host_key_policy(_FirstUse(host_id, trust if pinned is None else None))
        try:
            client.connect(host, port=port, username=user, key_filename=key_file, timeout=timeout,
                           banner_timeout=timeout, auth_timeout=timeout, look_for_keys=key_file is None,
                           allow_agent=key_file is None)
        except paramiko.BadHostKeyException as e:
            client.close()
            known = pinned or known_key
            known_text = f"{known[0]} {key_fingerprint(known[1])}" if known else \
                f"{e.expected_key.get_name()} {key_fingerprint(e.expected_key.get_base64())} (known_hosts)"
            raise HostKeyRefused(f"the host key of {host_id} changed: scitq knows {known_text}, the host offers "
                                 f"{e.key.get_name()} {key_fingerprint(e.key.get_base64())}. If the host was "
                                 f"reinstalled, forget the old key (`scitq host-key forget {host_id}`); else "
                                 "someone may be in the middle", host=host_id) from None
        except _Refused as e:
            client.close()
            raise HostKeyRefused(str(e.args[0]), host=host_id) from None
        except paramiko.AuthenticationException as e:
            client.close()
            raise SshError(f"{user}@{host}:{port} refused our key ({e}): authorize it in "
                           f"~{user}/.ssh/authorized_keys there", host=host_id) from None
        except (socket.timeout, TimeoutError):
            client.close()
            raise SshError(f"{host}:{port} did not answer within {timeout:.0f} s", host=host_id) from None
        except (OSError, paramiko.SSHException, EOFError) as e:
            client.close()
            raise SshError(f"cannot connect to {host}:{port}: {_words(e)}", host=host_id) from None
        return cls(client, host, port, user)

    def close(self) -> None:
        self.client.close()

    def __enter__(self) -> "SshHost":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def run(self, command: str, on_line: Callable[[str], None] | None = None, input: bytes | None = None,
            timeout: float = 600.0, sudo: bool = True) -> tuple[int, str]:
        """Run `command` with sh (as root: through sudo when we are not); return its exit
        status and its output (stdout and stderr merged), each line also given to `on_line`."""
        full = (self.sudo if sudo else "") + "sh -c " + shlex.quote(command)
        try:
            chan = self.client.get_transport().open_session(timeout=timeout)
            chan.settimeout(timeout)
            chan.set_combine_stderr(True)
            chan.exec_command(full)
            if input is not None:
                chan.sendall(input)
            chan.shutdown_write()
            out: list[str] = []
            pending = b""
            while True:
                data = chan.recv(65536)
                if not data:
                    break
                pending += data
                *lines, pending = pending.split(b"\n")
                for raw in lines:
                    line = raw.decode("utf-8", "replace").rstrip("\r")
                    out.append(line)
                    if on_line:
                        on_line(line)
            if pending:
                line = pending.decode("utf-8", "replace")
                out.append(line)
                if on_line:
                    on_line(line)
            status = chan.recv_exit_status()
            chan.close()
        except ScitqError:
            raise
        except Exception as e:  # noqa: BLE001 - paramiko raises OSError, EOFError, SSHException and more
            raise SshError(f"{self.host}: the connection broke while running a command: {_words(e)}") from None
        return status, "\n".join(out)

    def put(self, local: str, remote: str, mode: int = 0o644,
            on_progress: Callable[[int, int], None] | None = None) -> None:
        """Upload a file (to a path the SSH user may write), then chmod it."""
        try:
            sftp = self.client.open_sftp()
            try:
                sftp.put(local, remote, callback=on_progress, confirm=True)
                sftp.chmod(remote, mode)
            finally:
                sftp.close()
        except ScitqError:
            raise
        except Exception as e:  # noqa: BLE001 - paramiko's SFTP errors are IOError, SSHException and more
            raise SshError(f"{self.host}: upload of {os.path.basename(local)} to {remote} failed: {_words(e)}") \
                from None


class _Refused(Exception):
    """Raised by the policy inside paramiko's connect, turned into HostKeyRefused after it."""


class _FirstUse:
    """paramiko's MissingHostKeyPolicy (duck-typed: it only calls missing_host_key): a key not
    in known_hosts nor pinned is trusted on first use through `trust`, which records it or
    refuses it. Without `trust` (a pinned key was expected), any other key is refused."""

    def __init__(self, host_id: str, trust: Callable[[str, str, str], Any] | None) -> None:
        self.host_id = host_id
        self.trust = trust

    def missing_host_key(self, client: Any, hostname: str, key: Any) -> None:
        key_type, key_b64 = key.get_name(), key.get_base64()
        if self.trust is None:
            raise _Refused(f"{self.host_id} offered {key_type} {key_fingerprint(key_b64)}, not the key its provider "
                           "pinned")
        try:
            self.trust(self.host_id, key_type, key_b64)
        except Conflict as e:
            raise _Refused(e.message) from None


def _words(e: BaseException) -> str:
    if isinstance(e, OSError) and e.strerror:
        return e.strerror.lower() if e.strerror[0].isupper() and e.strerror[1:2].islower() else e.strerror
    return str(e) or type(e).__name__
