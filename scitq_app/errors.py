"""The one exception tree of scitq.

Every error a user can cause or meet is a `ScitqError`. `server.py` maps the
class to an HTTP status (`http_status`) and `cli.py` to an exit code
(`exit_code`). A subclass's docstring is its default message.
"""
from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:  # typing costs milliseconds at every CLI start (bench/startup.py)
    from typing import Any


class ScitqError(Exception):
    """scitq failed."""

    http_status = 500
    exit_code = 1
    kind = "error"

    def __init__(self, message: str | None = None, **data: Any) -> None:
        self.message = message or (self.__doc__ or self.kind).strip().splitlines()[0]
        self.data = data
        super().__init__(self.message)

    def to_dict(self) -> dict:
        return {"error": self.kind, "detail": self.message, **({"data": self.data} if self.data else {})}


class ConfigError(ScitqError):
    """The configuration is invalid."""

    kind = "config"
    exit_code = 2


class UsageError(ScitqError):
    """The command line is invalid."""

    kind = "usage"
    exit_code = 2


class BadRequest(ScitqError):
    """The request is malformed."""

    kind = "bad_request"
    http_status = 400


class Unauthorized(ScitqError):
    """A valid bearer token is required."""

    kind = "unauthorized"
    http_status = 401
    exit_code = 6


class Forbidden(ScitqError):
    """This token's role may not do that."""

    kind = "forbidden"
    http_status = 403
    exit_code = 6


class NotFound(ScitqError):
    """No such object."""

    kind = "not_found"
    http_status = 404
    exit_code = 4


class MethodNotAllowed(ScitqError):
    """Method not allowed on this route."""

    kind = "method_not_allowed"
    http_status = 405


class Conflict(ScitqError):
    """The object is not in a state that allows this."""

    kind = "conflict"
    http_status = 409
    exit_code = 5


class Fenced(Conflict):
    """This execution is no longer the task's current attempt."""

    kind = "fenced"


class MisdirectedRequest(ScitqError):
    """This server does not answer to that host name."""

    # A DNS name the server does not know as its own (DNS rebinding): the fix is in
    # the server's configuration ([server] server_names), hence exit code 2.
    kind = "misdirected"
    http_status = 421
    exit_code = 2


class TooLarge(ScitqError):
    """The request body is too large."""

    kind = "too_large"
    http_status = 413


class UnsupportedMediaType(ScitqError):
    """The request body must be application/json."""

    kind = "unsupported_media_type"
    http_status = 415


class Invalid(ScitqError):
    """A field is invalid."""

    kind = "invalid"
    http_status = 422
    exit_code = 2

    def __init__(self, message: str | None = None, field: str | None = None, **data: Any) -> None:
        if field is not None:
            data["field"] = field
            if message and not message.startswith(field):
                message = f"{field}: {message}"
        super().__init__(message, **data)


class StoreUnavailable(ScitqError):
    """The database is unreachable."""

    kind = "store_unavailable"
    http_status = 503
    exit_code = 3


class ServerUnreachable(ScitqError):
    """The scitq server cannot be reached."""

    kind = "unreachable"
    http_status = 503
    exit_code = 3


class ServerConfigError(ConfigError):
    """The server's configuration does not allow this."""

    # The request is fine but the server's own config (e.g. an unreadable
    # [server] tls_certificate) is not: a 4xx the admin can act on, not a 500 bug.
    kind = "server_config"
    http_status = 409


class TlsMismatch(ScitqError):
    """The server's TLS certificate is not the pinned one."""

    # Never a ServerUnreachable: retrying cannot help, and the peer may be an impostor.
    kind = "tls_mismatch"
    exit_code = 6


class TlsUntrusted(TlsMismatch):
    """The server's TLS certificate is not trusted and no fingerprint pins it."""

    # A self-signed certificate without a pin: waiting will not make it trusted.
    kind = "tls_untrusted"


class StorageError(ScitqError):
    """A storage transfer failed."""

    kind = "storage"


class ProvisionError(ScitqError):
    """Provisioning a worker failed."""

    kind = "provision"


class SshError(ProvisionError):
    """A host could not be reached, or refused us, over SSH."""

    kind = "ssh"


class HostKeyRefused(SshError):
    """A host offered another SSH key than the one scitq knows for it."""

    kind = "host_key"


class ReleaseError(ScitqError):
    """A scitq.pyz could not be installed as the new release."""

    kind = "release"


class MissingDependency(ConfigError):
    """A Python package needed by this role is missing."""

    kind = "missing_dependency"


# kind -> class, so the HTTP client can raise the same error the server raised.
BY_KIND: dict[str, type[ScitqError]] = {}


def _register(cls: type[ScitqError]) -> None:
    BY_KIND.setdefault(cls.kind, cls)
    for sub in cls.__subclasses__():
        _register(sub)


_register(ScitqError)
