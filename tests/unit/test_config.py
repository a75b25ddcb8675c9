"""Configuration: defaults < file < env < flags, validated once, frozen."""
from __future__ import annotations

import os

import pytest

from scitq_app.config import DEFAULT_PATH, OPTIONS, env_name, load_config, reference_table
from scitq_app.errors import ConfigError


@pytest.fixture
def conf_file(tmp_path):
    def write(text: str) -> str:
        path = tmp_path / "scitq.conf"
        path.write_text(text, encoding="utf-8")
        return str(path)
    return write


def test_defaults_with_no_file_and_no_env():
    c = load_config(os.devnull, env={})
    for (section, key), opt in OPTIONS.items():
        assert c.get(section, key) == opt.default
        assert c.origins[(section, key)] == "default"
    assert c.server.port == 5000 and c.server.listen == "127.0.0.1"
    assert c.server.database == "sqlite:///scitq.db"


def test_the_machine_file_is_read_only_when_it_exists():
    assert load_config(None, env={}, exists=lambda p: False).path is None
    seen: list[str] = []

    def exists(p: str) -> bool:
        seen.append(p)
        return True
    try:
        assert load_config(None, env={}, exists=exists).path == DEFAULT_PATH
    except ConfigError as e:  # this machine has no /etc/scitq.conf: the error names it
        assert DEFAULT_PATH in e.message
    assert seen == [DEFAULT_PATH]


def test_scitq_config_names_the_file(conf_file):
    path = conf_file("[server]\nport = 6000\n")
    c = load_config(None, env={"SCITQ_CONFIG": path})
    assert c.server.port == 6000 and c.path == path


def test_precedence_defaults_file_env_flags(conf_file):
    path = conf_file("[server]\nport = 6000\nthreads = 8\nlisten = 0.0.0.0\n[worker]\nconcurrency = 3\n")
    env = {"SCITQ_SERVER_PORT": "7000", "SCITQ_SERVER_THREADS": "9"}
    c = load_config(path, env=env, flags={"server_port": 8000, "worker_prefetch": None})
    assert c.server.port == 8000 and c.origins[("server", "port")] == "flag"
    assert c.server.threads == 9 and c.origins[("server", "threads")] == "SCITQ_SERVER_THREADS"
    assert c.server.listen == "0.0.0.0" and c.origins[("server", "listen")] == path
    assert c.worker.concurrency == 3
    assert c.worker.prefetch == 0 and c.origins[("worker", "prefetch")] == "default"  # None flags are ignored


def test_values_are_typed(conf_file):
    path = conf_file("[server]\ndispatcher = off\nclaim_wait = 2.5\n[log]\nlevel = debug\n")
    c = load_config(path, env={"SCITQ_WORKER_HEARTBEAT": "1", "SCITQ_SERVER_PORT": " 5001 "})
    assert c.server.dispatcher is False and c.server.claim_wait == 2.5 and c.log.level == "debug"
    assert c.worker.heartbeat == 1.0 and isinstance(c.worker.heartbeat, float)
    assert c.server.port == 5001


@pytest.mark.parametrize("raw,value", [("1", True), ("yes", True), ("TRUE", True), ("on", True),
                                       ("0", False), ("no", False), ("Off", False), ("false", False)])
def test_booleans(raw, value):
    assert load_config(os.devnull, env={"SCITQ_SERVER_DISPATCHER": raw}).server.dispatcher is value


def test_an_unknown_section_names_it_and_the_file(conf_file):
    path = conf_file("[sever]\nport = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "[sever]" in info.value.message and path in info.value.message


def test_an_unknown_key_names_it_and_the_file(conf_file):
    path = conf_file("[server]\nprot = 1\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert "'prot'" in info.value.message and path in info.value.message and "[server]" in info.value.message


@pytest.mark.parametrize("section,key,raw", [
    ("server", "port", "http"), ("server", "port", "5000.5"), ("server", "port", "0"), ("server", "port", ""),
    ("server", "threads", "1"), ("server", "dispatcher", "maybe"), ("dispatcher", "lease", "soon"),
    ("dispatcher", "lease", "0.5"), ("dispatcher", "lease", "nan"), ("dispatcher", "interval", "inf"),
    ("worker", "status", "draining"), ("worker", "engine", "lxc"), ("log", "level", "verbose"),
    ("worker", "mem", "-1"), ("client", "timeout", "-inf"),
])
def test_bad_values_are_refused_naming_the_key_and_where_from(conf_file, section, key, raw):
    path = conf_file(f"[{section}]\n{key} = {raw}\n")
    with pytest.raises(ConfigError) as info:
        load_config(path, env={})
    assert f"{section}.{key}" in info.value.message and path in info.value.message
    with pytest.raises(ConfigError) as info:
        load_config(os.devnull, env={env_name(section, key): raw})
    assert f"{section}.{key}" in info.value.message and env_name(section, key) in info.value.message


def test_a_bad_flag_names_the_flag():
    with pytest.raises(ConfigError) as info:
        load_config(os.devnull, env={}, flags={"server_port": "x"})
    assert "--port" in info.value.message
    with pytest.raises(ConfigError) as info:
        load_config(os.devnull, env={}, flags={"server_nope": 1})
    assert "server_nope" in info.value.message


def test_a_missing_or_broken_file_is_a_config_error(tmp_path, conf_file):
    with pytest.raises(ConfigError) as info:
        load_config(str(tmp_path / "absent.conf"), env={})
    assert "absent.conf" in info.value.message
    for text in ("port = 1\n", "[server]\nport = 1\nport = 2\n", "[server\n"):
        with pytest.raises(ConfigError):
            load_config(conf_file(text), env={})


def test_scitq_server_and_token_aliases():
    c = load_config(os.devnull, env={"SCITQ_SERVER": "http://h:1", "SCITQ_TOKEN": "tok"})
    assert c.client.server == "http://h:1" and c.client.token == "tok"
    assert c.origins[("client", "server")] == "SCITQ_SERVER"
    c = load_config(os.devnull, env={"SCITQ_SERVER": "http://alias:1", "SCITQ_CLIENT_SERVER": "http://full:2"})
    assert c.client.server == "http://full:2"
    assert c.server_url() == "http://full:2"


def test_the_worker_server_wins_for_the_worker():
    c = load_config(os.devnull, env={"SCITQ_SERVER": "http://c:1/", "SCITQ_WORKER_SERVER": "http://w:2/"})
    assert c.server_url() == "http://w:2"


def test_the_configuration_is_frozen():
    c = load_config(os.devnull, env={})
    with pytest.raises(AttributeError):
        c.server.port = 1
    with pytest.raises(AttributeError):
        c.nosuchsection
    with pytest.raises(AttributeError):
        c.server.nosuchkey
    with pytest.raises(TypeError):
        c.origins[("server", "port")] = "x"  # type: ignore[index]


def test_with_values_validates_overrides():
    c = load_config(os.devnull, env={})
    d = c.with_values(server_port="6001")
    assert d.server.port == 6001 and c.server.port == 5000
    with pytest.raises(ConfigError):
        c.with_values(server_port="nope")


def test_every_option_is_documented_with_its_env_var():
    rows = reference_table()
    assert len(rows) == len(OPTIONS)
    for section, key, default, env, help_text in rows:
        assert env == f"SCITQ_{section.upper()}_{key.upper()}" and help_text


def test_every_default_passes_its_own_validation():
    env = {env_name(s, k): (("true" if o.default else "false") if isinstance(o.default, bool) else str(o.default))
           for (s, k), o in OPTIONS.items()}
    c = load_config(os.devnull, env=env)
    assert all(c.get(s, k) == o.default for (s, k), o in OPTIONS.items())
