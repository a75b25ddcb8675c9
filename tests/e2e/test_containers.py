"""End to end with a real container engine: a server, workers with `[worker] engine` set, and
tasks run in images made here from the host's busybox.

podman runs always (CI installs it; without it these tests skip, or fail when
SCITQ_TEST_REQUIRE_CONTAINERS=1); docker runs too when `dockerd` is installed, on a private
throwaway daemon. Pulls come from a private registry started here (docker-registry, with a
password the workers get from their config). Everything made here has a random name and is
removed by name at the end; no other image or container is touched.
"""
from __future__ import annotations

import os
import signal

import pytest

from scitq_app.containers import workdir_tag
from scitq_app.errors import Invalid
from tests.support.cluster import Cluster
from tests.support.containers import (Engine, Registry, ThrowawayDockerd, busybox_rootfs_tar, engine_wrapper,
                                      make_owned_dir, remove_owned_dir, static_busybox, suffix)
from tests.support.processes import read_text, wait_for

pytestmark = pytest.mark.containers

REQUIRED = os.environ.get("SCITQ_TEST_REQUIRE_CONTAINERS") == "1"
RUN = "sh"
LOOP = "while :; do sleep 0.2; done"  # a PID 1 shell runs its traps between two short sleeps


def _missing(reason: str) -> None:
    if REQUIRED:
        pytest.fail(f"{reason} (required: SCITQ_TEST_REQUIRE_CONTAINERS=1)")
    pytest.skip(reason)


@pytest.fixture(scope="module")
def registry():
    if not Registry.available():
        _missing("no docker-registry (apt-get install docker-registry) or no bcrypt module")
    r = Registry().start()
    yield r
    r.stop()


@pytest.fixture(scope="module", params=["podman", "docker"])
def engine(request):
    """The engine under test, its environment for workers, and a local busybox image."""
    if static_busybox() is None:
        _missing("no static busybox to build images from (apt-get install busybox-static)")
    daemon = None
    if request.param == "podman":
        e = Engine("podman", global_flags=["--runtime", "runc"])
        if not (os.path.exists("/usr/bin/runc") or os.path.exists("/usr/sbin/runc")) or not e.works():
            _missing("podman with runc is not installed (apt-get install podman runc)")
        worker_env = {"SCITQ_WORKER_ENGINE_OPTIONS": "--runtime runc"}
    else:
        if not ThrowawayDockerd.available():
            _missing("no dockerd (apt-get install docker.io) to start a private docker daemon with")
        daemon = ThrowawayDockerd().start()
        e = Engine("docker", env={"DOCKER_HOST": daemon.host})
        worker_env = {"DOCKER_HOST": daemon.host}
    e.image = e.import_image(f"localhost/scitq-test-{suffix()}:1", busybox_rootfs_tar())
    e.worker_env.update(worker_env)
    try:
        yield e
    finally:
        e.remove_image(e.image)
        if daemon is not None:
            daemon.stop()


class Setup:
    """The cluster, the engine and what the tests share."""

    def __init__(self, cluster: Cluster, engine: Engine, registry: Registry, root: str) -> None:
        self.cluster, self.engine, self.registry, self.root = cluster, engine, registry, root
        self.client = cluster.client
        self.calls = os.path.join(root, "engine-calls.log")
        self.bin = os.path.join(root, "bin")
        os.makedirs(self.bin)
        engine_wrapper(self.bin, engine, self.calls)
        repo = f"{registry.host}/scitq-test-{suffix()}"
        self.remote = f"{repo}/tool:1"
        self.missing = f"{repo}/missing:1"
        registry.push(engine, engine.image, self.remote)
        engine.remove_image(self.remote)  # the worker must pull it
        self.workers: list = []

    def env(self) -> dict[str, str]:
        e = self.engine
        env = {"SCITQ_WORKER_ENGINE": e.name, "SCITQ_WORKER_RUN_OPTIONS": "--network=none",
               "SCITQ_WORKER_CPU": "8", "SCITQ_WORKER_REGISTRY": self.registry.host,
               "SCITQ_WORKER_REGISTRY_USER": self.registry.user,
               "SCITQ_WORKER_REGISTRY_PASSWORD": self.registry.password,
               "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}", **e.worker_env}
        if e.name == "podman":
            env["CONTAINERS_REGISTRIES_CONF"] = self.registry.registries_conf
        return env

    def worker(self, name: str, concurrency: int = 4):
        """A worker that runs only the tasks of batch `name` (submit them with batch=name)."""
        w = self.cluster.worker(f"{name}-{suffix()}", concurrency=concurrency,
                                env={**self.env(), "SCITQ_WORKER_BATCH": name})
        self.workers.append(w)
        return w

    def container(self, worker, execution_id: int) -> str:
        return f"scitq-{execution_id}-{workdir_tag(worker.workdir)}"

    def submit(self, command: str, **fields) -> int:
        fields.setdefault("container", self.engine.image)
        fields.setdefault("batch", "main")
        return self.client.submit(command, **fields)["ids"][0]

    def execution(self, task_id: int) -> dict:
        return self.client.executions(task_id)[0]

    def running_container(self, worker, task_id: int) -> str:
        task = self.cluster.wait_status(task_id, "running", timeout=30)
        name = self.container(worker, task["current_execution_id"])
        wait_for(lambda: self.engine.status(name) == "running", 20, 0.1, f"container {name} running")
        return name

    def pulls(self) -> list[str]:
        return [ln for ln in self.calls_log() if " pull " in f" {ln} "]

    def calls_log(self) -> list[str]:
        return read_text(self.calls).splitlines() if os.path.exists(self.calls) else []


@pytest.fixture(scope="module")
def setup(engine, registry):
    root = make_owned_dir(f"scitq-ctr-{engine.name}-")
    # A longer lease than the other e2e tests: the restart test must not race the dispatcher, even on a
    # loaded CI host where killing, removing a container and restarting the worker took over 15 s.
    cluster = Cluster(f"sqlite:///{root}/scitq.db", root, env={"SCITQ_DISPATCHER_LEASE": "45"}).start()
    s = Setup(cluster, engine, registry, root)
    try:
        yield s
    except BaseException:
        print(cluster.diagnostics())
        raise
    finally:
        cluster.stop()
        for w in s.workers:
            engine.remove_containers(workdir_tag(w.workdir))
        engine.remove_image(s.remote)
        remove_owned_dir(root)


@pytest.fixture(scope="module")
def worker(setup):
    return setup.worker("main", concurrency=4)


@pytest.fixture(autouse=True)
def _diagnostics(request, setup):
    failed = request.session.testsfailed
    yield
    if request.session.testsfailed > failed:
        print(setup.cluster.diagnostics())


def test_mounts_environment_working_dir_exit_codes_and_removal(setup, worker):
    probe = setup.submit(
        'echo "cpu=$CPU pwd=$(pwd) input=$INPUT"; echo in > /input/from-task; echo out > /output/result.txt; '
        'echo scratch > /tmp/scratch; if touch /resource/x 2>/dev/null; then echo resource=rw; '
        'else echo resource=ro; fi; grep -E " /(input|output|tmp|resource) " /proc/mounts | '
        'awk \'{split($4, o, ","); print $2, o[1]}\' | sort; exit 3', shell=RUN)
    argv = setup.submit('echo "two words" plain')  # shell none: split like a shell, run as argv
    bash = setup.submit("echo bash-ok; exit 0", shell="bash")
    missing_tool = setup.submit("no-such-tool --version")
    # `-e NAME` would copy NAME from the engine command's environment: refused at submission
    with pytest.raises(Invalid) as refused:
        setup.submit('echo "pw=${SCITQ_WORKER_REGISTRY_PASSWORD:-none}"', shell=RUN,
                     container_options="-e SCITQ_WORKER_REGISTRY_PASSWORD -e SCITQ_WORKER_TOKEN")
    assert "give NAME=VALUE" in refused.value.message
    tasks = setup.cluster.wait_final([probe, argv, bash, missing_tool], timeout=90)

    assert tasks[probe]["status"] == "failed"
    e = setup.execution(probe)
    assert (e["return_code"], e["failure_class"]) == (3, "app")
    assert setup.cluster.output(probe) == ("cpu=2 pwd=/tmp input=/input\nresource=ro\n"
                                           "/input rw\n/output rw\n/resource ro\n/tmp rw\n")
    work = os.path.join(worker.workdir, f"exec-{e['id']}")  # a failed task's work dir is kept
    assert read_text(f"{work}/output/result.txt") == "out\n"
    assert read_text(f"{work}/input/from-task") == "in\n"
    assert read_text(f"{work}/tmp/scratch") == "scratch\n"
    assert not os.path.exists(f"{work}/resource/x")

    assert tasks[argv]["status"] == "succeeded" and setup.cluster.output(argv) == "two words plain\n"
    assert tasks[bash]["status"] == "succeeded" and setup.cluster.output(bash) == "bash-ok\n"
    assert tasks[missing_tool]["status"] == "failed"
    e = setup.execution(missing_tool)
    assert e["failure_class"] == "app", e
    assert "no-such-tool" in setup.cluster.output(missing_tool, "stderr")

    for tid in tasks:
        name = setup.container(worker, setup.execution(tid)["id"])
        assert setup.engine.inspect(name) is None, f"container {name} was not removed"
    me = wait_for(lambda: [w for w in setup.client.workers() if w["name"] == worker.name
                           and w.get("stats", {}).get("engine")], 20, 0.2, "heartbeat stats")[0]
    assert me["stats"]["engine"] == setup.engine.name and me["stats"]["engine_version"]


def test_pause_resume_stop_and_kill_act_on_the_container(setup, worker):
    stopped = setup.submit(f"trap 'echo terminated; exit 143' TERM; echo ready; {LOOP}", shell=RUN)
    name = setup.running_container(worker, stopped)
    setup.client.signal_task(stopped, "pause")
    wait_for(lambda: setup.engine.status(name) == "paused", 15, 0.1, "container paused")
    assert setup.client.task(stopped)["status"] == "paused"
    setup.client.signal_task(stopped, "resume")
    wait_for(lambda: setup.engine.status(name) == "running", 15, 0.1, "container running again")
    setup.client.signal_task(stopped, "stop")
    execution = wait_for(lambda: (e := setup.execution(stopped))["status"] == "failed" and e, 20)
    assert (execution["failure_class"], execution["return_code"]) == ("canceled", 128 + signal.SIGTERM)
    assert setup.cluster.output(stopped) == "ready\nterminated\n"
    assert setup.engine.inspect(name) is None

    killed = setup.submit(f"trap '' TERM; {LOOP}", shell=RUN)
    name = setup.running_container(worker, killed)
    setup.client.signal_task(killed, "pause")
    wait_for(lambda: setup.engine.status(name) == "paused", 15, 0.1, "container paused")
    setup.client.signal_task(killed, "kill")  # a paused container is killed too
    execution = wait_for(lambda: (e := setup.execution(killed))["status"] == "failed" and e, 20)
    assert (execution["failure_class"], execution["return_code"]) == ("canceled", 128 + signal.SIGKILL)
    assert setup.client.task(killed)["status"] == "canceled"
    assert setup.engine.inspect(name) is None


def test_run_timeout_stops_the_container_then_kills_it_after_the_grace(setup, worker):
    polite = setup.submit(f"trap 'exit 143' TERM; {LOOP}", shell=RUN, run_timeout=1)
    stubborn = setup.submit(f"trap '' TERM; {LOOP}", shell=RUN, run_timeout=1)  # killed after the 10 s grace
    tasks = setup.cluster.wait_final([polite, stubborn], timeout=60)
    for tid, code in ((polite, 128 + signal.SIGTERM), (stubborn, 128 + signal.SIGKILL)):
        assert tasks[tid]["status"] == "failed"
        e = setup.execution(tid)
        assert (e["failure_class"], e["return_code"]) == ("timeout", code)
        assert "run_timeout of 1 s reached" in setup.cluster.output(tid, "stderr")
        assert setup.engine.inspect(setup.container(worker, e["id"])) is None


def test_a_container_killed_for_memory_fails_with_class_oom(setup, worker):
    if not setup.engine.memory_limits_work(setup.engine.image, cwd=setup.root):
        _missing(f"{setup.engine.name} on this kernel does not enforce --memory (no cgroup memory controller)")
    tid = setup.submit("dd if=/dev/zero of=/dev/null bs=128M count=1",
                       container_options="--memory 32m --memory-swap 32m")
    task = setup.cluster.wait_final([tid], timeout=60)[tid]
    e = setup.execution(tid)
    assert task["status"] == "failed" and e["failure_class"] == "oom", e
    assert e["return_code"] == 128 + signal.SIGKILL
    assert setup.engine.inspect(setup.container(worker, e["id"])) is None


def test_a_private_image_is_pulled_once_for_many_tasks_and_a_missing_one_fails_as_the_task_s_error(setup):
    w = setup.worker("puller", concurrency=6)
    first = [setup.submit(f"echo task-{i}", container=setup.remote, batch="puller") for i in range(6)]
    tasks = setup.cluster.wait_final(first, timeout=90)
    assert {t["status"] for t in tasks.values()} == {"succeeded"}
    assert setup.cluster.output(first[4]) == "task-4\n"
    later = [setup.submit(f"echo later-{i}", container=setup.remote, batch="puller") for i in range(3)]
    assert {t["status"] for t in setup.cluster.wait_final(later, timeout=60).values()} == {"succeeded"}
    assert len(setup.pulls()) == 1, setup.pulls()
    assert len([ln for ln in setup.calls_log() if " login " in f" {ln} "]) == 1
    assert setup.registry.password not in read_text(setup.calls), "the password never goes on a command line"

    missing = setup.submit("echo never", container=setup.missing, batch="puller")
    task = setup.cluster.wait_final([missing], timeout=60)[missing]
    e = setup.execution(missing)
    assert task["status"] == "failed" and e["failure_class"] == "app", "the registry has no such image"
    stderr = setup.cluster.output(missing, "stderr")
    assert f"cannot pull image {setup.missing}" in stderr and "manifest unknown" in stderr, stderr
    assert setup.engine.containers(workdir_tag(w.workdir)) == []


def test_a_restarted_worker_reattaches_to_its_containers_and_reports_a_vanished_one_lost_once(setup):
    w = setup.worker("phoenix", concurrency=3)

    def held(flag: str, then: str = "") -> int:  # runs until the test creates /tmp/go in its container
        return setup.submit(f"echo {flag}-start; while [ ! -e /tmp/go ]; do sleep 0.1; done; echo {flag}-end"
                            + then, shell=RUN, batch="phoenix")
    running, ended, vanished = held("running"), held("ended", "; exit 5"), held("vanished")
    names = {tid: setup.running_container(w, tid) for tid in (running, ended, vanished)}

    def release(tid: int) -> None:  # the container's /tmp is its execution's tmp/ on the host
        eid = setup.client.task(tid)["current_execution_id"]
        open(os.path.join(w.workdir, f"exec-{eid}", "tmp", "go"), "w").close()
    w.proc.kill()  # SIGKILL: no chance to clean anything
    w.proc.wait(10)
    setup.engine.run("rm", "-f", names[vanished])
    release(ended)
    wait_for(lambda: setup.engine.status(names[ended]) == "exited", 20, 0.1, "the released task to end")
    assert setup.engine.status(names[running]) == "running"

    again = setup.cluster.worker(w.name, concurrency=3,  # same name and work dir
                                 env={**setup.env(), "SCITQ_WORKER_BATCH": "phoenix"})
    setup.workers.append(again)
    wait_for(lambda: again.log().count("re-attached") == 2, 20, 0.1, "two re-attached containers")
    release(running)
    # the vanished one is reported lost and runs again, in a new container and work dir
    first = setup.client.executions(vanished)[0]["id"]
    wait_for(lambda: (t := setup.client.task(vanished))["status"] == "running" and t["current_execution_id"] != first,
             30, 0.1, "the vanished task to run again")
    release(vanished)
    tasks = setup.cluster.wait_final([running, ended, vanished], timeout=60)
    assert tasks[running]["status"] == "succeeded"
    assert setup.cluster.output(running) == "running-start\nrunning-end\n"
    assert [e["status"] for e in setup.client.executions(running)] == ["succeeded"]
    assert tasks[ended]["status"] == "failed"
    e = setup.client.executions(ended)
    assert [(x["failure_class"], x["return_code"]) for x in e] == [("app", 5)]
    assert setup.cluster.output(ended) == "ended-start\nended-end\n"
    assert tasks[vanished]["status"] == "succeeded"
    lost = setup.client.executions(vanished)
    assert [(x["status"], x["failure_class"]) for x in lost] == [("succeeded", None), ("failed", "lost")]
    assert setup.cluster.output(vanished) == "vanished-start\nvanished-end\n"
    assert setup.engine.containers(workdir_tag(w.workdir)) == [], "no container left behind"
