"""A dask scheduler and worker processes on 127.0.0.1, started with the standard ``dask`` commands.

Used by ``test_cluster.py`` and ``benchmarks/cluster.py``. The commands are
the ones ``doc/bob_integration.rst`` ("On a cluster") shows, with a free port
instead of 8786 (a test checks that the two agree). Every process is started
in a session of its own, so that :meth:`LocalCluster.stop` reaches the worker
processes that each ``dask worker`` (a nanny) spawns; ``stop`` runs even when
starting fails half way, and the workers also exit by themselves
(``--death-timeout``) if the scheduler disappears.
"""
import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence

#: ``dask`` command of the environment running the tests.
DASK = Path(sys.executable).with_name("dask")
#: Seconds a worker waits for a scheduler that has gone away before exiting.
DEATH_TIMEOUT = 60


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def scheduler_command(port: int) -> List[str]:
    """``dask scheduler`` on 127.0.0.1:``port``, without the web dashboard."""
    return ["dask", "scheduler", "--host", "127.0.0.1", "--port", str(port), "--no-dashboard"]


def worker_command(address: str, nthreads: int = 1, name: Optional[str] = None) -> List[str]:
    """One ``dask worker`` process with ``nthreads`` threads, listening on 127.0.0.1."""
    command = ["dask", "worker", address, "--nthreads", str(nthreads), "--host", "127.0.0.1", "--no-dashboard"]
    return command + (["--name", name] if name else [])


def client_file_text(address: str) -> str:
    """The ``-l`` file that hands ``bob bio pipeline simple`` to the scheduler at ``address``."""
    return f'import distributed\n\ndask_client = distributed.Client("{address}")\n'


def mount_namespace_available() -> bool:
    """Whether ``unshare --mount`` can give a process its own view of the file system (root only)."""
    try:
        probe = subprocess.run(
            ["unshare", "--mount", "--propagation", "private", "true"], capture_output=True, timeout=30
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return probe.returncode == 0


def on_another_host(command: Sequence[str], hidden_folder: os.PathLike, before: Sequence[str] = ()) -> List[str]:
    """``command`` run as if on a host that does not share ``hidden_folder``.

    The process gets its own mount namespace in which an empty ``tmpfs``
    covers ``hidden_folder``; ``before`` (for instance ``bob pytorch
    download-models``) runs there first, so whatever it writes into the
    folder is seen by that process alone.
    """
    steps = [f"mount -t tmpfs none {shlex.quote(os.fspath(hidden_folder))}"]
    if before:
        steps.append(shlex.join(before))
    steps.append("exec " + shlex.join(command))
    return ["unshare", "--mount", "--propagation", "private", "sh", "-c", " && ".join(steps)]


class LocalCluster:
    """A scheduler and ``workers`` worker processes of ``nthreads`` threads each, on 127.0.0.1.

    Parameters
    ----------
    folder : os.PathLike
        Receives the processes' logs and the workers' scratch folders.
    workers : int
        Number of ``dask worker`` commands started.
    nthreads : int
        Threads of each worker (``--nthreads``).
    env : mapping, optional
        Environment of every process (default: this process's).
    worker_env : mapping, optional
        Added to the workers' environment only.
    wrap_worker : callable, optional
        Turns each worker command into the command actually started (see :func:`on_another_host`).
    timeout : float
        Seconds to wait for the scheduler and the workers to be ready.

    Examples
    --------
    ::

        with LocalCluster(tmp_path, workers=2) as cluster:
            run(["bob", ..., "-l", cluster.client_file])
    """

    def __init__(
        self,
        folder: os.PathLike,
        workers: int = 2,
        nthreads: int = 1,
        env: Optional[Mapping[str, str]] = None,
        worker_env: Optional[Mapping[str, str]] = None,
        wrap_worker=None,
        timeout: float = 180.0,
    ) -> None:
        self.folder = Path(folder)
        self.workers = workers
        self.nthreads = nthreads
        self.env: Dict[str, str] = dict(os.environ if env is None else env)
        self.worker_env = dict(worker_env or {})
        self.wrap_worker = wrap_worker
        self.timeout = timeout
        self.port = 0
        self.processes: List[subprocess.Popen] = []
        self._logs: List = []

    @property
    def address(self) -> str:
        """The scheduler's address, ``tcp://127.0.0.1:PORT``."""
        return f"tcp://127.0.0.1:{self.port}"

    @property
    def client_file(self) -> Path:
        """A ``-l`` file for ``bob bio pipeline simple`` that connects to this cluster."""
        path = self.folder / "client.py"
        path.write_text(client_file_text(self.address))
        return path

    def log(self, name: str) -> str:
        """Text of the log of ``scheduler`` or ``worker-N``."""
        return (self.folder / f"{name}.log").read_text(errors="replace")

    def __enter__(self) -> "LocalCluster":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def start(self) -> "LocalCluster":
        """Start the scheduler, then the workers; return once all workers have registered."""
        self.folder.mkdir(parents=True, exist_ok=True)
        try:
            self.port = free_port()
            self._spawn("scheduler", scheduler_command(self.port), self.env)
            self._wait_for_workers(0)
            worker_env = dict(self.env, **self.worker_env)
            for index in range(1, self.workers + 1):
                name = f"worker-{index}"
                command = worker_command(self.address, self.nthreads, name) + [
                    "--death-timeout", str(DEATH_TIMEOUT),
                    "--local-directory", str(self.folder / name),
                ]
                command = _absolute(command)
                if self.wrap_worker is not None:
                    command = self.wrap_worker(command)
                self._spawn(name, command, worker_env)
            self._wait_for_workers(self.workers)
        except BaseException:
            self.stop()
            raise
        return self

    def _spawn(self, name: str, command: List[str], env: Mapping[str, str]) -> None:
        command = _absolute(command)
        log = open(self.folder / f"{name}.log", "w")
        self._logs.append(log)
        self.processes.append(
            subprocess.Popen(
                command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT, env=dict(env),
                cwd=self.folder, start_new_session=True,
            )
        )

    def _wait_for_workers(self, count: int) -> None:
        """Wait until the scheduler answers and ``count`` workers have registered with it."""
        import distributed

        deadline = time.monotonic() + self.timeout
        while True:
            self._check_alive()
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise TimeoutError(f"{count} dask workers not ready after {self.timeout:g} s; see {self.folder}")
            try:
                with distributed.Client(self.address, timeout=min(remaining, 10)) as client:
                    if count:
                        client.wait_for_workers(count, timeout=remaining)
                return
            except (OSError, TimeoutError):
                time.sleep(0.5)

    def _check_alive(self) -> None:
        for process in self.processes:
            if process.poll() is not None:
                name = Path(self._logs[self.processes.index(process)].name).stem
                raise RuntimeError(f"{name} exited with status {process.returncode}:\n{self.log(name)[-3000:]}")

    def stop(self, grace: float = 30.0) -> None:
        """Stop the workers, then the scheduler (SIGTERM, then SIGKILL after ``grace`` seconds)."""
        for process in reversed(self.processes):
            _signal_group(process, signal.SIGTERM)
            try:
                process.wait(grace)
            except subprocess.TimeoutExpired:
                pass
            _signal_group(process, signal.SIGKILL)  # leftovers of the group, if any
            process.wait()
        self.processes.clear()
        for log in self._logs:
            log.close()
        self._logs.clear()


def _absolute(command: List[str]) -> List[str]:
    """``command`` with ``dask`` replaced by the ``dask`` of this environment."""
    return [str(DASK) if part == "dask" else part for part in command]


def _signal_group(process: subprocess.Popen, number: int) -> None:
    try:
        os.killpg(process.pid, number)  # start_new_session: the group id is the process id
    except ProcessLookupError:
        pass
