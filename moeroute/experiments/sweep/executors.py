"""Where a sweep's points are computed: in the driver (serial), in N local worker processes, or as Ray tasks on a
local or existing Ray cluster. Every executor runs :func:`moeroute.experiments.sweep.point.compute_point` and
hands the rows back; only the driver writes results, so resume, crash safety and the rows themselves are the same
whichever executor ran them (docs/sweeps.md).

An executor's :meth:`Executor.run` takes an iterable of tasks and yields ``(task, rows)`` as points finish (in
completion order, not task order). At most ``2 * workers`` tasks are in flight, so a sweep of a million points
does not queue a million pickled tasks, and a killed driver loses at most the points in flight.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator, Optional

from moeroute.core.errors import MoeRouteError
from moeroute.experiments.sweep.point import PointTask, compute_point

Finished = tuple[PointTask, list[dict[str, Any]]]

RAY_INSTALL = "the ray executor needs Ray: pip install 'moeroute[cluster]' (or pip install ray)"


def plugin_files() -> list[str]:
    """The ``--plugin`` files this process loaded (workers load them too, so their routers exist there)."""
    return sorted(
        str(Path(module.__file__))
        for name, module in list(sys.modules.items())
        if name.startswith("moeroute_plugin_") and getattr(module, "__file__", None)
    )


def _exit_with_parent(parent: int, every_s: float = 0.5) -> None:
    """Leave as soon as the driver is gone: a killed driver cannot shut its pool down, and a worker blocked on the
    task queue would otherwise wait for ever (the queue's pipe stays open in the worker itself)."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(every_s)
        os._exit(1)

    threading.Thread(target=watch, name="moeroute-parent-watch", daemon=True).start()


def _init_worker(plugins: list[str], threads: int, parent: int) -> None:
    """Start-up of a local worker process: exit with the driver, load the driver's plugins, set torch's threads."""
    import torch

    from moeroute.core.plugins import load_plugin_file

    _exit_with_parent(parent)
    torch.set_num_threads(threads)
    for path in plugins:
        load_plugin_file(path)


def _bounded(submit: Callable[[PointTask], Any], wait_one: Callable[[set], tuple[set, set]],
             result: Callable[[Any], list[dict[str, Any]]], tasks: Iterable[PointTask], window: int) -> Iterator[Finished]:
    """Keep at most ``window`` tasks in flight; yield each as it finishes. ``wait_one(pending) -> (done, rest)``."""
    queue = iter(tasks)
    pending: dict[Any, PointTask] = {}
    for task in queue:
        pending[submit(task)] = task
        if len(pending) >= window:
            break
    while pending:
        done, _ = wait_one(set(pending))
        for handle in done:
            task = pending.pop(handle)
            yield task, result(handle)
            nxt = next(queue, None)
            if nxt is not None:
                pending[submit(nxt)] = nxt


def worker_threads(threads: Optional[int], workers: int) -> int:
    """torch threads per worker: ``threads``, or (``None``: torch's default) this machine's cores shared among the
    workers, so that N workers never start N times the cores in threads."""
    if threads is not None:
        if threads < 1:
            raise MoeRouteError(f"threads must be >= 1, got {threads}")
        return threads
    return max(1, (os.cpu_count() or 1) // max(1, workers))


class Executor:
    """Runs point tasks; ``name`` is recorded in each row's ``worker`` column (``name:pid``), ``threads`` is what
    each worker sets torch's intra-op threads to (``None``: the driver's setting, for the serial executor)."""

    name = "serial"
    workers = 1
    threads: Optional[int] = None

    def run(self, tasks: Iterable[PointTask]) -> Iterator[Finished]:
        for task in tasks:
            yield task, compute_point(task)

    def close(self) -> None:
        pass

    def describe(self) -> str:
        return "serial, in this process"

    def __enter__(self) -> "Executor":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class ProcessExecutor(Executor):
    """``workers`` local processes (spawned, so each starts with a clean torch and sets its own threads)."""

    name = "process"

    def __init__(self, workers: int, threads: Optional[int]):
        if workers < 2:
            raise MoeRouteError(f"a process pool needs >= 2 workers, got {workers}")
        self.workers = workers
        self.threads = worker_threads(threads, workers)
        self.pool = cf.ProcessPoolExecutor(
            max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
            initializer=_init_worker, initargs=(plugin_files(), self.threads, os.getpid()),
        )

    def run(self, tasks: Iterable[PointTask]) -> Iterator[Finished]:
        def wait_one(pending: set) -> tuple[set, set]:
            return cf.wait(pending, return_when=cf.FIRST_COMPLETED)

        try:
            yield from _bounded(lambda t: self.pool.submit(compute_point, t), wait_one,
                                lambda f: f.result(), tasks, 2 * self.workers)
        except cf.process.BrokenProcessPool:
            raise MoeRouteError("a sweep worker process died (out of memory or killed); the finished points are "
                                "saved, re-run to continue") from None

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)

    def describe(self) -> str:
        return f"{self.workers} local worker processes with {self.threads} thread(s) each"


class RayExecutor(Executor):
    """Ray tasks: on a local Ray started here (``address=None``) or on the cluster at ``address``. Each task asks
    for ``threads`` CPUs, so Ray never runs more tasks on a node than it has CPUs for."""

    name = "ray"

    def __init__(self, address: Optional[str], workers: Optional[int], threads: Optional[int]):
        try:
            import ray
        except ImportError:
            raise MoeRouteError(RAY_INSTALL) from None
        self.ray = ray
        self.threads = worker_threads(threads, 1) if threads is not None else 1
        self.started = False
        if not ray.is_initialized():
            if address is None:
                start_local_ray((workers or os.cpu_count() or 1) * self.threads, self.threads)
            else:
                _ray_init(address=address, runtime_env={"env_vars": _worker_env(plugin_files(), self.threads)})
            self.started = True
        slots = max(1, int(ray.cluster_resources().get("CPU", 1)) // self.threads)
        self.workers = min(workers, slots) if workers else slots
        self.remote = ray.remote(num_cpus=self.threads, max_retries=0)(_ray_compute_point)

    def run(self, tasks: Iterable[PointTask]) -> Iterator[Finished]:
        ray = self.ray

        def wait_one(pending: set) -> tuple[set, set]:
            done, rest = ray.wait(list(pending), num_returns=1)
            return set(done), set(rest)

        def result(ref: Any) -> list[dict[str, Any]]:
            try:
                return ray.get(ref)
            except ray.exceptions.RayTaskError as exc:
                cause = exc.cause if getattr(exc, "cause", None) is not None else exc
                if isinstance(cause, MoeRouteError):
                    raise MoeRouteError(str(cause)) from None
                raise MoeRouteError(f"a Ray task failed: {type(cause).__name__}: {str(cause).splitlines()[0][:200]}") from None

        yield from _bounded(self.remote.remote, wait_one, result, tasks, 2 * self.workers)

    def close(self) -> None:
        if self.started:
            self.ray.shutdown()
            self.started = False

    def describe(self) -> str:
        return f"Ray, up to {self.workers} task(s) at a time with {self.threads} thread(s) each"


def _ray_init(**kwargs: Any) -> None:
    import ray

    try:
        ray.init(include_dashboard=False, log_to_driver=False, **kwargs)
    except Exception as exc:  # ray raises ConnectionError, RuntimeError, ValueError for a bad address
        raise MoeRouteError(f"cannot start or reach Ray ({type(exc).__name__}: {str(exc).splitlines()[0][:200]})") from None


def start_local_ray(num_cpus: int, threads: int = 1) -> None:
    """Start a local Ray of ``num_cpus`` CPUs whose workers import this moeroute (the driver's source tree comes
    first on their path) and load the driver's plugins."""
    try:
        import ray  # noqa: F401
    except ImportError:
        raise MoeRouteError(RAY_INSTALL) from None
    env = _worker_env(plugin_files(), threads)
    env["PYTHONPATH"] = os.pathsep.join([str(Path(__file__).resolve().parents[3])] + [p for p in sys.path if p])
    _ray_init(num_cpus=num_cpus, runtime_env={"env_vars": env})


def _worker_env(plugins: list[str], threads: int) -> dict[str, str]:
    return {"MOEROUTE_PLUGINS": os.pathsep.join(plugins), "OMP_NUM_THREADS": str(threads)}


def _ray_compute_point(task: PointTask) -> list[dict[str, Any]]:
    """A Ray task: load the driver's plugins once per worker process, then compute the point."""
    from moeroute.core.plugins import load_plugin_file

    for path in filter(None, os.environ.get("MOEROUTE_PLUGINS", "").split(os.pathsep)):
        if f"moeroute_plugin_{Path(path).stem}" not in sys.modules:
            load_plugin_file(path)
    return compute_point(task)


def make_executor(kind: str, workers: int = 1, threads: Optional[int] = 1, address: Optional[str] = None) -> Executor:
    """``kind="local"`` (``workers`` processes; 1 = in this process) or ``"ray"`` (``address``: an existing
    cluster; ``None``: a local Ray with ``workers`` CPUs, default all)."""
    if workers < 1:
        raise MoeRouteError(f"--workers must be >= 1, got {workers}")
    if kind == "ray":
        return RayExecutor(address, workers if workers > 1 else None, threads)
    if address is not None:
        raise MoeRouteError("--address applies to --executor ray only")
    if kind != "local":
        raise MoeRouteError(f"unknown executor {kind!r} (local or ray)")
    return ProcessExecutor(workers, threads) if workers > 1 else Executor()
