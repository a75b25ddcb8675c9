"""TLS for tests: a self-signed certificate made with the `openssl` command, and a
small TLS-terminating proxy (stdlib ssl, a thread per connection) to put in front
of a real scitq server, the way a reverse proxy does in production."""
from __future__ import annotations

import hashlib
import os
import select
import shutil
import socket
import ssl
import subprocess
import threading

from .postgres import free_port


def openssl_available() -> bool:
    return shutil.which("openssl") is not None


def make_certificate(folder: str, name: str = "scitq", host: str = "127.0.0.1") -> tuple[str, str, str]:
    """A self-signed certificate for `host` in `folder`: (cert path, key path, sha256 of its DER)."""
    cert = os.path.join(folder, f"{name}.crt")
    key = os.path.join(folder, f"{name}.key")
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-sha256", "-days", "2",
                    "-subj", f"/CN={name}", "-addext", f"subjectAltName=IP:{host}", "-keyout", key, "-out", cert],
                   check=True, capture_output=True)
    return cert, key, fingerprint_of(cert)


def fingerprint_of(cert_path: str) -> str:
    with open(cert_path, encoding="ascii") as f:
        return hashlib.sha256(ssl.PEM_cert_to_DER_cert(f.read())).hexdigest()


class TlsProxy:
    """Accepts TLS on 127.0.0.1:<port> and relays the plain bytes to a backend
    (host, port), one thread pair per connection."""

    def __init__(self, cert: str, key: str, backend: tuple[str, int], port: int | None = None) -> None:
        self.backend = backend
        self.port = port or free_port()
        self.context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.context.load_cert_chain(cert, key)
        self._sock: socket.socket | None = None
        self._stop = threading.Event()
        self._conns: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    def start(self) -> "TlsProxy":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(("127.0.0.1", self.port))
        sock.listen(64)
        sock.settimeout(0.2)
        self._sock = sock
        self._thread = threading.Thread(target=self._accept, name="tls-proxy", daemon=True)
        self._thread.start()
        return self

    def _accept(self) -> None:
        assert self._sock is not None
        while not self._stop.is_set():
            try:
                raw, _ = self._sock.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            threading.Thread(target=self._serve, args=(raw,), daemon=True).start()

    def _serve(self, raw: socket.socket) -> None:
        raw.settimeout(30)
        try:
            client = self.context.wrap_socket(raw, server_side=True)
        except (ssl.SSLError, OSError):
            raw.close()  # e.g. a client that refused our certificate
            return
        try:
            upstream = socket.create_connection(self.backend, timeout=30)
        except OSError:
            client.close()
            return
        client.settimeout(None)
        upstream.settimeout(None)
        with self._lock:
            self._conns.update((client, upstream))
        # One thread drives both directions: an SSL socket must not be read and
        # written from two threads at once.
        try:
            while not self._stop.is_set():
                ready = [client] if client.pending() else \
                    select.select([client, upstream], [], [], 0.5)[0]
                for src in ready:
                    data = src.recv(65536)
                    if not data:
                        return
                    (upstream if src is client else client).sendall(data)
        except OSError:
            pass
        finally:
            for sock in (client, upstream):
                try:
                    sock.close()
                except OSError:
                    pass
            with self._lock:
                self._conns.difference_update((client, upstream))

    def stop(self) -> None:
        self._stop.set()
        if self._sock is not None:
            self._sock.close()
        if self._thread is not None:
            self._thread.join(5)
        with self._lock:
            conns, self._conns = list(self._conns), set()
        for s in conns:
            try:
                s.close()
            except OSError:
                pass
