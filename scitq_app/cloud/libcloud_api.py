"""What the libcloud providers (openstack, azure) share: a libcloud call whose errors come out
in scitq's words, never with a credential in them."""
from __future__ import annotations

from typing import Any, Sequence

from ..errors import ConfigError, MissingDependency, ProvisionError

RETRIED = (409, 429, 500, 502, 503, 504)   # the provider is busy or failing now: try again later


class LibcloudApi:
    """Calls into libcloud for provider `provider`. Errors: refused credentials (401/403, or an
    Azure AD sign-in refusal, AADSTS...) -> ConfigError naming the settings to `check`; 429 / 5xx /
    409 -> ProvisionError(retry=True); other HTTP errors -> ProvisionError(retry=False); network
    trouble -> ProvisionError(retry=True). A read or delete of what is not there (404, or 204 for a
    delete of nothing) returns None. `secrets` are masked in every message."""

    def __init__(self, provider: str, secrets: Sequence[str], check: str) -> None:
        self.provider = provider
        self.secrets = [s for s in secrets if s]
        self.check = check

    def driver_class(self, kind: str) -> Any:
        """libcloud's compute driver class for `kind` (a libcloud Provider constant's name)."""
        try:
            from libcloud.compute.providers import get_driver
            from libcloud.compute.types import Provider as Kind
        except ImportError:
            raise MissingDependency(f"provider {self.provider} needs apache-libcloud: apt-get install "
                                    "python3-libcloud (or pip install apache-libcloud)") from None
        return get_driver(getattr(Kind, kind))

    def call(self, what: str, fn: Any, *args: Any, **kw: Any) -> Any:
        from libcloud.common.exceptions import BaseHTTPError
        from libcloud.common.types import InvalidCredsError, LibcloudError
        try:
            return fn(*args, **kw)
        except InvalidCredsError:
            raise self.refused(what, 401) from None
        except BaseHTTPError as e:
            code = getattr(e, "code", None)
            if code in (204, 404):
                return None
            if code in (401, 403) or code == 400 and "AADSTS" in str(e.message):
                raise self.refused(what, code) from None
            raise ProvisionError(f"provider {self.provider}: could not {what}: HTTP {code}: "
                                 f"{self.masked(str(e.message))[:200]}", retry=code in RETRIED) from None
        except (LibcloudError, OSError, KeyError, ValueError) as e:
            raise ProvisionError(f"provider {self.provider}: could not {what}: {self.masked(str(e))[:200]}",
                                 retry=True) from None

    def refused(self, what: str, code: int | None) -> ConfigError:
        return ConfigError(f"provider {self.provider}: the credentials were refused ({code}) while trying to "
                           f"{what}: check {self.check}")

    def masked(self, text: str) -> str:
        for secret in self.secrets:
            text = text.replace(secret, "***")
        return text
