"""The container options policy: how options are read (every spelling the engine reads), the
server's allow-list and the worker's deny-list."""
from __future__ import annotations

import os
import stat

import pytest

from scitq_app.config import load_config
from scitq_app.container_policy import (DEFAULT_ALLOW, DEFAULT_DENY, Option, PolicyError, check_allowed, denied,
                                        parse_rules, split_options)
from scitq_app.containers import ContainerRunner
from scitq_app.errors import ConfigError, Invalid
from scitq_app.runner import RunSpec, StartError

ALLOW = parse_rules(DEFAULT_ALLOW, "[server] container_options")
DENY = parse_rules(DEFAULT_DENY, "[worker] container_deny")

# (options, the option as the refusal names it)
DANGEROUS = [
    ("--privileged", "--privileged"),
    ("--privileged=true", "--privileged=true"),
    ("-v /:/host", "-v /:/host"),
    ("-v/:/host", "-v /:/host"),
    ("-v=/:/host", "-v /:/host"),
    ("--volume=/:/h", "--volume=/:/h"),
    ("--volume /:/h", "--volume /:/h"),
    ("-itv /:/h", "-v /:/h"),
    ("-it -v /etc:/etc", "-v /etc:/etc"),
    ("--mount type=bind,source=/,target=/h", "--mount type=bind,source=/,target=/h"),
    ("--mount=type=bind,source=/,target=/h", "--mount=type=bind,source=/,target=/h"),
    ("--volumes-from other", "--volumes-from other"),
    ("--pid=host", "--pid=host"),
    ("--pid host", "--pid host"),
    ("--network=host", "--network=host"),
    ("--network host", "--network host"),
    ("--net=host", "--net=host"),
    ("--network=container:scitq-7", "--network=container:scitq-7"),
    ("--ipc=host", "--ipc=host"),
    ("--uts=host", "--uts=host"),
    ("--userns=host", "--userns=host"),
    ("--cgroupns=host", "--cgroupns=host"),
    ("--cap-add SYS_ADMIN", "--cap-add SYS_ADMIN"),
    ("--cap-add=ALL", "--cap-add=ALL"),
    ("--security-opt seccomp=unconfined", "--security-opt seccomp=unconfined"),
    ("--security-opt=apparmor=unconfined", "--security-opt=apparmor=unconfined"),
    ("--device /dev/sda", "--device /dev/sda"),
    ("--device=/dev/mem", "--device=/dev/mem"),
    ("--env-file /etc/scitq.conf", "--env-file /etc/scitq.conf"),
    ("--log-opt path=/etc/cron.d/x", "--log-opt path=/etc/cron.d/x"),
    ("--rootfs /", "--rootfs /"),
]


@pytest.mark.parametrize("options,shown", DANGEROUS)
def test_every_dangerous_form_is_refused_by_the_default_allow_list(options, shown):
    with pytest.raises(PolicyError) as e:
        check_allowed("--gpus all " + options, ALLOW)
    assert e.value.http_status == 422
    # combined short flags: -i, the first of them, is already off the allow-list
    first = "-i" if options.startswith("-it") else shown
    assert f"container_options: {first} is not allowed by this server's [server] container_options" in \
        e.value.message
    assert e.value.data["field"] == "container_options"


@pytest.mark.parametrize("options,shown", DANGEROUS)
def test_every_dangerous_form_is_on_the_default_deny_list(options, shown):
    assert denied("--shm-size 1g " + options, DENY) == shown


@pytest.mark.parametrize("options", [
    "", "--gpus all", "--gpus=all --shm-size 2g", "-e A=1 --env B=2 --env=C=3", "-eA=1",
    "--ulimit nofile=1024:1024", "--memory 8g -m 8g --memory-swap 8g --cpus 2.5 --cpu-shares 512",
    "--cpuset-cpus 0-3 --pids-limit 100", "-w /tmp --workdir=/output", "--entrypoint ''", "--init --read-only",
    "--network=none", "--network none", "--hostname sample1"])
def test_harmless_options_pass_both_lists(options):
    check_allowed(options, ALLOW)
    assert denied(options, DENY) is None


@pytest.mark.parametrize("options,shown", [
    ("--rm", "--rm"), ("-it", "-i"), ("--user 0", "--user 0"), ("--tmpfs /x", "--tmpfs /x"),
    ("--network bridge", "--network bridge"), ("--some-future-flag", "--some-future-flag")])
def test_an_option_off_the_allow_list_is_refused_even_when_harmless(options, shown):
    with pytest.raises(PolicyError) as e:
        check_allowed(options, ALLOW)
    assert shown in e.value.message and "not allowed" in e.value.message


@pytest.mark.parametrize("options", ["alpine", "--gpus all ubuntu", "-- --privileged", "--gpus", "-e"])
def test_what_is_not_a_complete_option_is_refused(options):
    with pytest.raises(PolicyError):
        check_allowed(options, ALLOW)


def test_a_bare_env_name_is_refused_it_would_copy_the_workers_variable():
    with pytest.raises(PolicyError) as e:
        check_allowed("-e SCITQ_WORKER_TOKEN", ALLOW)
    assert "NAME=VALUE" in e.value.message


def test_unbalanced_quotes_are_invalid_and_denied_by_the_worker():
    with pytest.raises(Invalid):
        check_allowed("--env 'A=1", ALLOW)
    assert denied("--env 'A=1", DENY) is not None


def test_bulk_errors_name_the_task():
    with pytest.raises(PolicyError) as e:
        check_allowed("--privileged", ALLOW, "tasks[3].container_options")
    assert e.value.data["field"] == "tasks[3].container_options"
    assert e.value.message.startswith("tasks[3].container_options: --privileged")


def test_a_value_that_looks_like_an_option_is_a_value():
    # `-e --privileged` sets a variable named --privileged: the engine reads it so too
    assert split_options("-e --privileged", strict=False) == [Option("env", "--privileged", "-e")]


def test_the_worker_reads_unknown_options_as_flags_so_nothing_hides_behind_them():
    assert denied("--future-flag --privileged", DENY) == "--privileged"
    assert denied("positional -v /:/h", DENY) == "-v /:/h"


def test_rules_with_patterns_and_short_names():
    rules = parse_rules("--network=none, -e --label=team=*", "x")
    check_allowed("--network=none -e A=1 --label team=bio", rules)
    for bad in ("--network=bridge", "--label owner=me"):
        with pytest.raises(PolicyError):
            check_allowed(bad, rules)
    with pytest.raises(PolicyError) as e:
        check_allowed("--gpus all", parse_rules("", "x"))
    assert "allowed: none" in e.value.message


@pytest.mark.parametrize("text", ["privileged", "-", "-xy", "---"])
def test_a_rule_that_is_not_an_option_is_a_config_error(text):
    with pytest.raises(ConfigError) as e:
        parse_rules(text, "[server] container_options")
    assert "[server] container_options" in e.value.message


def test_the_config_defaults_are_the_policy_defaults():
    config = load_config(os.devnull, env={})
    assert config.server.container_options == DEFAULT_ALLOW
    assert config.worker.container_deny == DEFAULT_DENY


def _engine(tmp_path, deny: str = DEFAULT_DENY) -> tuple[ContainerRunner, str]:
    """A podman stand-in that records its calls."""
    calls = tmp_path / "calls"
    path = tmp_path / "podman"
    path.write_text(f"#!/bin/sh\necho \"$@\" >> {calls}\necho '[]'\n")
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    runner = ContainerRunner("podman", workdir=str(tmp_path), state_dir=str(tmp_path / ".scitq"),
                             binary=str(path), deny=deny)
    return runner, str(calls)


def _spec(tmp_path, options: str) -> RunSpec:
    dirs = {}
    for k in ("input", "output", "resource", "tmp"):
        dirs[k] = str(tmp_path / "exec-1" / k)
        os.makedirs(dirs[k], exist_ok=True)
    return RunSpec(command="true", shell="none", dirs=dirs, cpu=1, name="scitq-1", container="alpine",
                   container_options=options)


@pytest.mark.parametrize("options", ["--privileged", "-v /:/host", "--pid=host", "--cap-add SYS_ADMIN"])
def test_the_worker_fails_a_denied_task_as_staging_before_calling_the_engine(tmp_path, options):
    runner, calls = _engine(tmp_path)
    for step in (runner.prepare, runner.start):
        with pytest.raises(StartError) as e:
            step(_spec(tmp_path, options))
        assert e.value.failure_class == "staging"
        assert "[worker] container_deny" in e.value.message and options.split()[0] in e.value.message
    assert not os.path.exists(calls)  # no pull, no create


def test_a_worker_with_an_empty_deny_list_leaves_the_decision_to_the_server(tmp_path):
    runner, _ = _engine(tmp_path, deny="")
    runner.refuse_denied(_spec(tmp_path, "--privileged"))


def test_a_bad_deny_list_stops_the_worker_with_the_key(tmp_path):
    with pytest.raises(ConfigError) as e:
        _engine(tmp_path, deny="privileged")
    assert "[worker] container_deny" in e.value.message
