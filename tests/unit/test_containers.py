"""The container runner without a real engine: config checks, the dispatching runner, and the
apptainer command line (checked with a stand-in `apptainer` script that records its arguments)."""
from __future__ import annotations

import os
import resource
import stat

import pytest

from scitq_app.config import load_config
from scitq_app.containers import ContainerRunner, KernelLog, WorkerRunner, make_runner, safe_ulimits, workdir_tag
from scitq_app.errors import ConfigError
from scitq_app.runner import LocalRunner, RunSpec, StartError


def _config(**values):
    return load_config(os.devnull, env={}).with_values(**values)


def _script(path, body: str) -> str:
    with open(path, "w") as f:
        f.write("#!/bin/sh\n" + body)
    os.chmod(path, os.stat(path).st_mode | stat.S_IXUSR)
    return str(path)


def _spec(tmp_path, **kw) -> RunSpec:
    dirs = {}
    for k in ("input", "output", "resource", "tmp"):
        dirs[k] = str(tmp_path / "exec-1" / k)
        os.makedirs(dirs[k], exist_ok=True)
    return RunSpec(**{"command": "echo hi", "shell": "sh", "dirs": dirs, "cpu": 2, "name": "scitq-1", **kw})


def test_no_engine_runs_everything_on_the_host_and_refuses_images(tmp_path):
    runner = make_runner(_config(), str(tmp_path), str(tmp_path / ".scitq"))
    assert (runner.name, runner.version, runner.engine) == ("none", "", None)
    assert runner.attach("scitq-1") is None
    with pytest.raises(StartError) as e:
        runner.start(_spec(tmp_path, container="alpine:3"))
    assert e.value.failure_class == "infra" and "[worker] engine" in e.value.message


def test_a_missing_engine_command_is_a_config_error_naming_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(ConfigError) as e:
        make_runner(_config(worker_engine="podman"), str(tmp_path), str(tmp_path))
    assert "apt-get install podman" in e.value.message and "engine = none" in e.value.message


def test_an_engine_that_does_not_answer_is_a_config_error_with_its_message(tmp_path):
    fake = _script(tmp_path / "docker", 'echo "Cannot connect to the Docker daemon at unix:///x.sock" >&2; exit 1\n')
    runner = ContainerRunner("docker", workdir=str(tmp_path), state_dir=str(tmp_path), binary=fake)
    with pytest.raises(ConfigError) as e:
        runner.check()
    assert "Cannot connect to the Docker daemon" in e.value.message
    assert "start the docker daemon" in e.value.message and "\n" not in e.value.message


def test_the_engine_version_is_what_it_says(tmp_path):
    fake = _script(tmp_path / "podman", 'echo 4.3.1\n')
    runner = ContainerRunner("podman", workdir=str(tmp_path), state_dir=str(tmp_path), binary=fake)
    assert runner.check() == "4.3.1" and runner.version == "4.3.1"
    assert WorkerRunner(LocalRunner(), runner).version == "4.3.1"


@pytest.mark.parametrize("values", [{"registry_user": "u", "registry_password": "p"},
                                    {"registry": "r.example.org", "registry_user": "u"}])
def test_registry_credentials_go_together(tmp_path, values):
    with pytest.raises(ConfigError):
        ContainerRunner("podman", workdir=str(tmp_path), state_dir=str(tmp_path), binary="/bin/true", **values)


def test_ulimits_stay_within_the_hard_limits():
    flags = safe_ulimits()
    values = dict(f.split("=") for f in flags[1::2])
    for name, which in (("nofile", resource.RLIMIT_NOFILE), ("nproc", resource.RLIMIT_NPROC)):
        soft, hard = (int(x) for x in values[name].split(":"))
        limit = resource.getrlimit(which)[1]
        assert soft == hard and (limit == resource.RLIM_INFINITY or hard <= limit)


def test_work_dirs_get_distinct_container_tags(tmp_path):
    assert workdir_tag(str(tmp_path / "a")) != workdir_tag(str(tmp_path / "b"))
    assert workdir_tag(str(tmp_path / "a")) == workdir_tag(str(tmp_path / "a" / "."))


def test_the_kernel_log_finds_nothing_for_an_unknown_container():
    log = KernelLog()
    try:
        assert log.oom_killed("0" * 64) is False
        assert log.oom_killed("") is False
    finally:
        log.close()


@pytest.fixture
def fake_apptainer(tmp_path):
    """An `apptainer` that records each call and its credentials, `pull` writes the SIF file."""
    calls = tmp_path / "calls.log"
    body = (f'echo "$* | user=$APPTAINER_DOCKER_USERNAME" >> {calls}\n'
            'if [ "$1" = pull ]; then echo sif > "$3"; fi\n'
            'if [ "$1" = exec ]; then echo ran; fi\n')
    return _script(tmp_path / "apptainer", body), calls


def test_apptainer_mounts_env_workdir_and_pulls_each_image_once(tmp_path, fake_apptainer):
    binary, calls = fake_apptainer
    runner = ContainerRunner("apptainer", workdir=str(tmp_path), state_dir=str(tmp_path / "state"), binary=binary,
                             run_options="--nv", registry="reg.example.org", registry_user="bob",
                             registry_password="s3cret")
    spec = _spec(tmp_path, container="reg.example.org/tools/bwa:1", container_options="--cleanenv",
                 extra_env={"EXTRA": "1"})
    for _ in range(2):
        process = runner.start(spec)
        assert process.stdout.read() == b"ran\n"
        assert process.wait().return_code == 0
        process.stdout.close()
        process.stderr.close()
    lines = calls.read_text().splitlines()
    pulls = [ln for ln in lines if ln.startswith("pull ")]
    assert len(pulls) == 1 and "docker://reg.example.org/tools/bwa:1 | user=bob" in pulls[0]
    sif = pulls[0].split()[2][:-len(".part")]
    d = spec.dirs
    assert lines[1] == (f"exec --containall --pwd /tmp --bind {d['input']}:/input,{d['output']}:/output,"
                        f"{d['tmp']}:/tmp,{d['resource']}:/resource:ro --env CPU=2 --env INPUT=/input "
                        "--env OUTPUT=/output --env RESOURCE=/resource --env TEMP=/tmp --env EXTRA=1 --nv "
                        f"--cleanenv {sif} sh -c echo hi | user=")
    assert "s3cret" not in calls.read_text()
    assert runner.attach("scitq-1") is None  # apptainer tasks are host processes: nothing to re-attach


@pytest.mark.parametrize("said, fclass", [("FATAL: manifest unknown", "app"),
                                          ("FATAL: dial tcp 10.0.0.9:443: connect: connection refused", "infra")])
def test_a_failed_pull_is_a_start_error_with_the_engines_message_and_is_not_retried_at_once(tmp_path, said, fclass):
    """A missing image is the task's error; a registry out of reach is the worker's (infra: no retry spent)."""
    calls = tmp_path / "calls.log"
    binary = _script(tmp_path / "apptainer", f'echo "$1" >> {calls}; echo "{said}" >&2; exit 255\n')
    runner = ContainerRunner("apptainer", workdir=str(tmp_path), state_dir=str(tmp_path / "state"), binary=binary)
    for _ in range(3):  # tasks wanting the same broken image fail alike, from one pull
        with pytest.raises(StartError) as e:
            runner.prepare(_spec(tmp_path, container="docker://nowhere/none:1"))
        assert e.value.failure_class == fclass
        assert f"cannot pull image docker://nowhere/none:1: {said}" in e.value.message
    assert calls.read_text() == "pull\n"
