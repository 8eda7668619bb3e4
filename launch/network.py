"""One launcher for a whole fedtier network on this machine: real processes on loopback.

``fedtier sandbox``, the benchmarks and the tests all need the same thing: a reducer,
some combiners and clients started exactly as a deployment starts them (each its own
``fedtier`` process, real sockets, the embedded stores under one data directory),
waited for, seeded, driven through a session, stopped whatever happens, with each
process's log in a file to read when something fails. Five copies of that drifted
apart (one checked the reducer it talked to was its own, the others did not), so it
lives here once.

The guarantee the copies did not all keep: nothing is started, seeded or asked of a
network until the reducer answering on its port is the one this launcher started
(it reports the instance id it was given). A port checked free can be taken before
the reducer binds it; combiners registering with some other network's reducer, under
its combiners' names, break that network.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import requests

#: The ``fedtier`` command as a child process runs it (the interpreter running this code,
#: so a virtualenv's fedtier, whatever PATH holds).
FEDTIER_ARGV: tuple[str, ...] = (sys.executable, "-m", "fedtier.launch.cli")

#: Variables a deployment sets that a local network must not inherit: it uses the embedded
#: stores and is one machine's open network (its processes log that identities are not checked).
DEPLOYMENT_VARIABLES = ("FEDN_MONGO_", "FEDN_MINIO_", "FEDN_ALLIANCE_", "FEDTIER_TOKEN_", "FEDTIER_CREDENTIALS_DIR")

LOOPBACK = "127.0.0.1"


class LaunchError(RuntimeError):
    """A process of the network could not be started, exited, or did not get ready in time; says why."""


class PortInUse(LaunchError):
    """The reducer's port is taken: nothing was started."""


class NotOurReducer(LaunchError):
    """The reducer answering on the network's port is not the one this launcher started: waiting cannot help."""


# ---------------------------------------------------------------- ports
def free_port(host: str = LOOPBACK) -> int:
    """A port nothing listens on now (the kernel's choice); another program may still take it first."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def port_in_use(port: int, host: str = LOOPBACK) -> bool:
    """Whether a server already listens on ``host:port`` (a bind, as the reducer's, fails)."""
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as werkzeug: TIME_WAIT is not "in use"
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


def wait_for_port(port: int, timeout: float = 30.0, proc: subprocess.Popen | None = None,
                  host: str = LOOPBACK) -> None:
    """Return once something accepts connections on ``host:port``; fail early if ``proc`` exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before opening port {port}")
        try:
            with socket.create_connection((host, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listening on port {port} after {timeout}s")


# ---------------------------------------------------------------- processes
class Processes:
    """Child processes, each with its output in ``<log_dir>/<name>.log``; all stopped by ``stop_all``.

    Any argv can be started (the benchmarks start Flower's processes too); ``fedtier``
    starts the ``fedtier`` command with no .env file read, so a developer's .env never
    changes what a test or a benchmark measures.
    """

    def __init__(self, log_dir: Path, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 log_level: str | None = None) -> None:
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.env = None if env is None else dict(env)  # None: this process's environment at each start
        self.cwd = Path(cwd) if cwd is not None else self.log_dir
        self.log_level = log_level
        self.procs: dict[str, subprocess.Popen] = {}

    def __enter__(self) -> "Processes":
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop_all()

    def start(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None = None) -> subprocess.Popen:
        """Start ``argv`` as ``name`` (its log file is named after it); ``env`` adds to the group's environment."""
        return self._popen(name, argv, env)

    def _popen(self, name: str, argv: Sequence[str], env: Mapping[str, str] | None) -> subprocess.Popen:
        full_env = {**(os.environ if self.env is None else self.env), "PYTHONUNBUFFERED": "1", **(env or {})}
        with open(self.log_path(name), "wb") as log:  # the child holds its own descriptor
            proc = subprocess.Popen(list(argv), stdout=log, stderr=subprocess.STDOUT, env=full_env, cwd=self.cwd)
        self.procs[name] = proc
        return proc

    def fedtier(self, name: str, *args: str, env: Mapping[str, str] | None = None,
                log_level: str | None = None) -> subprocess.Popen:
        """Start ``fedtier ARGS...`` as ``name``."""
        level = log_level or self.log_level
        return self._popen(name, [*FEDTIER_ARGV, "--env-file", os.devnull,
                                  *(["--log-level", level] if level else []), *args], env)

    def log_path(self, name: str) -> Path:
        return self.log_dir / f"{name}.log"

    def log(self, name: str) -> str:
        return self.log_path(name).read_text(errors="replace")

    def tail(self, name: str, chars: int = 3000) -> str:
        try:
            return self.log(name)[-chars:]
        except OSError:
            return ""

    def dump_logs(self, chars: int = 3000) -> str:
        """The end of every process's log, for a failure report."""
        return "\n".join(f"----- {name}\n{self.tail(name, chars)}" for name in self.procs)

    def check_alive(self) -> None:
        """Raise LaunchError naming the first process that exited, with its log's path and tail."""
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                raise LaunchError(f"{name} exited with code {proc.returncode}; see {self.log_path(name)}\n"
                                  f"{self.tail(name, 2000)}")

    def kill(self, name: str) -> None:
        proc = self.procs[name]
        proc.kill()
        proc.wait(10)

    def stop_all(self, timeout: float = 15.0) -> None:
        """SIGTERM to all (each shuts down in parallel), then SIGKILL to whoever outlives ``timeout``."""
        for proc in self.procs.values():
            if proc.poll() is None:
                proc.terminate()
        for proc in self.procs.values():
            try:
                proc.wait(timeout)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


# ---------------------------------------------------------------- the network
class LocalNetwork:
    """A reducer, its combiners and clients (or swarms) as ``fedtier`` processes on loopback.

    Use it as a context manager (everything is stopped on exit)::

        with LocalNetwork(work_dir) as net:
            net.start_reducer(helper="numpy")
            net.start_combiners(2)
            net.seed(seed_file)
            net.start_clients(5, project)
            session = net.wait_for_session(net.start_session(rounds=3, clients_required=5))

    ``port`` 0 picks a free one; a given port that is taken raises PortInUse before
    anything starts. Every process gets ``FEDTIER_DATA_DIR=data_dir`` (default
    ``work_dir``) and runs in ``work_dir``; logs go to ``work_dir/logs``. ``stop``, set
    from another thread, interrupts every wait.
    """

    def __init__(self, work_dir: Path, port: int = 0, data_dir: Path | None = None,
                 env: Mapping[str, str] | None = None, log_level: str | None = None,
                 startup_timeout: float = 120.0, stop: threading.Event | None = None) -> None:
        self.work_dir = Path(work_dir).resolve()
        self.logs = self.work_dir / "logs"
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else self.work_dir
        self.requested_port = port
        self.startup_timeout = startup_timeout
        self.stop = stop or threading.Event()
        base = {k: v for k, v in (os.environ if env is None else env).items()
                if not k.startswith(DEPLOYMENT_VARIABLES)}
        self.env = {**base, "FEDTIER_DATA_DIR": str(self.data_dir)}
        self.procs = Processes(self.logs, env=self.env, cwd=self.work_dir, log_level=log_level)
        self.port = 0
        self.url = ""
        self.instance = ""
        self.serving = False
        self.combiners: dict[str, int] = {}  # name -> gRPC port

    def __enter__(self) -> "LocalNetwork":
        return self

    def __exit__(self, *exc: object) -> None:
        self.shutdown()

    # ---- the reducer's REST API
    def api(self, method: str, path: str, timeout: float = 30, **kwargs: Any) -> Any:
        """One call to this network's reducer; LaunchError on an error status."""
        reply = requests.request(method, self.url + path, timeout=timeout, **kwargs)
        if reply.status_code >= 400:
            raise LaunchError(f"{method} {path} failed: {reply.status_code} {reply.text.strip()[:500]}")
        return reply.json()

    def check_alive(self) -> None:
        self.procs.check_alive()

    def wait_for(self, what: str, condition: Callable[[], Any], timeout: float | None = None,
                 retry_on: tuple[type[BaseException], ...] = (), interval: float = 0.25) -> Any:
        """Poll ``condition`` until it returns something true; LaunchError if a process exits or time runs out.

        A busy or starting reducer (a failed request, an error status) means "ask again";
        so does any exception in ``retry_on``. NotOurReducer never does.
        """
        deadline = time.monotonic() + (timeout or self.startup_timeout)
        while True:
            self.check_alive()
            if self.stop.is_set():
                raise LaunchError("interrupted")
            try:
                value = condition()
                if value:
                    return value
            except NotOurReducer:
                raise
            except (requests.RequestException, LaunchError, *retry_on):
                pass
            if time.monotonic() > deadline:
                raise LaunchError(f"timed out waiting for {what}; logs in {self.logs}")
            time.sleep(interval)

    # ---- starting
    def choose_port(self) -> str:
        """Fix the reducer's port and URL before starting it: PortInUse if the port asked for is taken.

        Separate from start_reducer so a caller can refuse early, before any other work.
        """
        if self.requested_port and port_in_use(self.requested_port):
            raise PortInUse(f"port {self.requested_port} is in use (another reducer or program listens there); "
                            f"nothing was started")
        self.port = self.requested_port or free_port()
        self.url = f"http://{LOOPBACK}:{self.port}"
        return self.url

    def start_reducer(self, *args: str, helper: str | None = None, env: Mapping[str, str] | None = None,
                      log_level: str | None = None) -> str:
        """Start the reducer and wait until it serves and is ours; returns its URL."""
        if self.instance:
            raise LaunchError("this network's reducer was already started")
        if not self.url:
            self.choose_port()
        self.instance = uuid.uuid4().hex
        self.procs.fedtier("reducer", "reducer", "--host", LOOPBACK, "--port", str(self.port),
                           *(["--helper", helper] if helper else []), "--instance-id", self.instance, *args,
                           env=env, log_level=log_level)
        self.wait_for("the reducer", self._own_reducer)
        self.serving = True
        return self.url

    def _own_reducer(self) -> dict[str, Any]:
        """The reducer's status, once the process answering is the one this launcher started.

        Anything else on the port (a network started earlier, whose reducer answers
        before ours has failed to bind) must never see our combiners.
        """
        status = self.api("GET", "/api/v1/status", timeout=5)
        if status.get("instance") != self.instance:
            raise NotOurReducer(f"{self.url} is answered by another reducer, not the one this launcher started; "
                                f"nothing else was started")
        return status

    def _require_reducer(self, what: str) -> None:
        if not self.serving:
            raise LaunchError(f"{what}: this network's own reducer is not serving yet (start_reducer first)")

    def spawn(self, name: str, *args: str, env: Mapping[str, str] | None = None,
              log_level: str | None = None) -> subprocess.Popen:
        """Start any ``fedtier`` process of this network (a swarm, a client with odd flags...), reducer first."""
        self._require_reducer(f"starting {name}")
        return self.procs.fedtier(name, *args, env=env, log_level=log_level)

    def start_combiners(self, count: int, *args: str, env: Mapping[str, str] | None = None,
                        log_level: str | None = None, wait: bool = True) -> dict[str, int]:
        """Start ``count`` more combiners (``combiner-N``) with extra ``args``; wait until each registered.

        Ours by name AND port: a combiner of the same name elsewhere is not one of ours.
        Their Prometheus endpoint is off: a FEDTIER_METRICS_PORT in the environment would
        be taken by the first.
        """
        self._require_reducer("starting combiners")
        started = {}
        for i in range(len(self.combiners), len(self.combiners) + count):
            name, port = f"combiner-{i}", free_port()
            self.spawn(name, "combiner", "--name", name, "--host", LOOPBACK, "--port", str(port),
                       "--reducer", self.url, "--metrics-port", "0", *args, env=env, log_level=log_level)
            started[name] = port
        self.combiners.update(started)
        if wait:
            self.wait_for("combiners to register", lambda: started.items() <= {
                (c["name"], c["port"]) for c in self.api("GET", "/api/v1/combiners")})
        return started

    def seed(self, path: Path, timeout: float = 600) -> Any:
        """Upload the seed model (``POST /seed``)."""
        self._require_reducer("seeding")
        with open(path, "rb") as f:
            return self.api("POST", "/seed", files={"seed": ("seed", f)}, timeout=timeout)

    def start_clients(self, count: int, project: Path, *args: str, data_path: str | None = None,
                      env: Mapping[str, str] | None = None, log_level: str | None = None,
                      wait: bool = True, timeout: float | None = None) -> list[str]:
        """Start ``count`` clients ``client-i`` holding partition ``i/count``; wait until all are active."""
        names = []
        for i in range(count):
            name = f"client-{i}"
            self.spawn(name, "client", "--reducer", self.url, "--project", str(project), "--name", name,
                       "--partition", f"{i}/{count}", *(["--data-path", data_path] if data_path else []), *args,
                       env=env, log_level=log_level)
            names.append(name)
        if wait:
            self.wait_for_clients(count, timeout)
        return names

    def wait_for_clients(self, count: int, timeout: float | None = None) -> dict[str, Any]:
        """Wait until the reducer counts at least ``count`` active clients; its status then."""
        return self.wait_for(f"{count} clients to connect",
                             lambda: (s := self.api("GET", "/api/v1/status"))["clients_active"] >= count and s,
                             timeout)

    # ---- sessions
    def start_session(self, **settings: Any) -> str:
        """``POST /start`` with these round settings; the session's id."""
        return self.api("POST", "/start", json=settings)["session_id"]

    def wait_for_session(self, session_id: str, timeout: float | None = None, interval: float = 0.5,
                         on_poll: Callable[[dict[str, Any]], None] | None = None) -> dict[str, Any]:
        """Wait until the session is no longer running; its document. ``on_poll`` sees it at every poll."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            self.check_alive()
            if self.stop.is_set():
                raise LaunchError("interrupted")
            session = self.api("GET", f"/api/v1/sessions/{session_id}")
            if on_poll is not None:
                on_poll(session)
            if session["status"] != "running":
                return session
            if deadline is not None and time.monotonic() > deadline:
                raise LaunchError(f"session {session_id} did not finish in {timeout:g}s; logs in {self.logs}")
            time.sleep(interval)

    def rounds(self, session_id: str) -> list[dict[str, Any]]:
        """The reducer's round documents of a session, in round order."""
        return sorted(self.api("GET", "/api/v1/rounds", params={"session_id": session_id}), key=lambda d: d["round"])

    # ---- stopping and logs
    def log_paths(self) -> dict[str, Path]:
        """Each started process's log file."""
        return {name: self.procs.log_path(name) for name in self.procs.procs}

    def shutdown(self, timeout: float = 15.0) -> None:
        """Stop every process this network started (SIGTERM, then SIGKILL after ``timeout``)."""
        self.procs.stop_all(timeout)
        self.serving = False
