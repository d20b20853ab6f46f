"""Run one function over many items (usually series) on worker processes, with a progress bar.

Local worker processes by default (a process pool; each task runs in a worker's main thread, with
:func:`ctdose.memory.keep_freed_memory`); an existing Dask cluster when its scheduler address is given.
``workers=1`` without a scheduler runs in-process (simplest to debug, and what most tests use).
Results come back in input order. A task that raises stops the run with that task's error as one
clean exception (no remote traceback; see :func:`parallel_map`); Ctrl-C cancels the tasks and stops
the worker processes before the KeyboardInterrupt goes on to the script.

:func:`prefetched` is the in-process counterpart for a loop whose work releases the GIL (torch): the
next item is loaded in one background thread while the current one is used.

Why not a local Dask cluster: Dask runs tasks in worker threads, whose malloc arenas glibc shrinks
after every large temporary; the kernel then zeroes the pages again on the next one. Measured on the
demo twin (26 scans, 2 workers, 2-core VM): 5:31 to 7:57 wall on a local Dask cluster (a third to a
half of the CPU time in the kernel), 4:31 on this pool.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import multiprocessing
import signal
import threading
from concurrent.futures import Future, ProcessPoolExecutor, ThreadPoolExecutor, as_completed
from typing import Any, Callable, Iterable, Iterator, Sequence, TypeVar

import cloudpickle
from tqdm.auto import tqdm

from ctdose.memory import keep_freed_memory

T = TypeVar("T")
R = TypeVar("R")


class TaskError(ValueError):
    """A task on a Dask worker failed with an error that is neither a ValueError nor an OSError.

    Its message is one line, ``<exception type>: <the task's message>``; the remote traceback is
    dropped (run with ``workers=1`` to debug such an error in-process).
    """


@contextlib.contextmanager
def dask_client(workers: int, scheduler: str | None = None,
                threads_per_worker: int = 1) -> Iterator[Any]:
    """A Dask client: connected to ``scheduler`` if given, else a local cluster of ``workers`` processes.

    The local cluster's own log records (a failed task's "Compute Failed" block with its traceback,
    warnings while it shuts down) are silenced: :func:`parallel_map` reports a task's error itself.
    """
    import dask
    from dask.distributed import Client, LocalCluster

    if scheduler:
        with Client(scheduler) as client:
            yield client
        return
    # Dask starts local workers with MALLOC_TRIM_THRESHOLD_=65536, which turns off glibc's dynamic mmap
    # threshold so that every large array is mapped and unmapped again: measured 2.5x the system time
    # on the twin's workload. Local workers keep glibc's defaults (None unsets the variable).
    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        with _sigint_ignored():
            cluster = LocalCluster(n_workers=workers, threads_per_worker=threads_per_worker, processes=True,
                                   dashboard_address=":0", silence_logs=logging.CRITICAL)
        with cluster, Client(cluster) as client:
            yield client


@contextlib.contextmanager
def _sigint_ignored() -> Iterator[None]:
    """SIGINT ignored while local worker processes are started, so that they inherit "ignore".

    A terminal's Ctrl-C goes to the whole process group: the worker processes would each print a
    KeyboardInterrupt traceback. Ignoring it there leaves Ctrl-C to this process alone, which closes
    them (:func:`parallel_map`). A Ctrl-C while they start (a second or two) is lost.
    """
    if threading.current_thread() is not threading.main_thread():  # only the main thread sets handlers
        yield
        return
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


def task_error(error: Exception) -> Exception:
    """The error to raise for a task's ``error``, free of the remote traceback and its chain.

    ValueError and OSError (bad input; FileNotFoundError and co. keep their file name) are the task's
    own exception, as an in-process run raises it; anything else becomes a :class:`TaskError`.
    """
    if isinstance(error, (ValueError, OSError)):
        error.__cause__, error.__context__ = None, None
        return error.with_traceback(None)
    message = " ".join(str(error).split()) or "(no message)"
    return TaskError(f"{type(error).__name__}: {message}")


def parallel_map(func: Callable[[T], R], items: Iterable[T], *, workers: int = 1,
                 scheduler: str | None = None, desc: str = "", unit: str = "series") -> list[R]:
    """``[func(x) for x in items]`` run on worker processes (or in-process when ``workers == 1``).

    ``func`` travels by value (cloudpickle), so it may be defined in a script or a test; items and
    results travel by reference (pickle). Results are in input order, whatever order the tasks finish
    in. The first task that fails cancels the others and its error is raised as :func:`task_error`
    makes it, so that a script's ``error: ...`` line is the task's message alone (e.g.
    ``series <uid>: ...``).
    """
    items = list(items)
    if not items:
        return []
    if scheduler:
        return _dask_map(func, items, scheduler, desc, unit)
    if workers <= 1:
        keep_freed_memory()
        with tqdm(items, desc=desc, unit=unit) as bar:  # closed (its line ended) before an error prints
            return [func(item) for item in bar]
    payload = cloudpickle.dumps(func)
    with _sigint_ignored():  # the workers start while tasks are submitted, and inherit "ignore"
        pool = ProcessPoolExecutor(min(workers, len(items)), mp_context=multiprocessing.get_context("spawn"),
                                   initializer=_start_worker)
        futures = [pool.submit(_run_task, payload, item) for item in items]
    try:
        index = {future: n for n, future in enumerate(futures)}
        return _gather(as_completed(futures), index.__getitem__, len(futures), desc, unit)
    except BaseException:  # a task's error or Ctrl-C: stop the worker processes now, not after their tasks
        for process in list(getattr(pool, "_processes", {}).values()):
            process.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)


def _start_worker() -> None:
    """A local worker process's set-up: Ctrl-C left to the script (which stops the workers), freed
    memory kept for the next task (:mod:`ctdose.memory`)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    keep_freed_memory()


@functools.lru_cache(maxsize=4)
def _load_function(payload: bytes) -> Callable[[Any], Any]:
    return cloudpickle.loads(payload)


def _run_task(payload: bytes, item: Any) -> Any:
    """One task on a local worker process: ``func(item)``, ``func`` unpickled once per worker."""
    return _load_function(payload)(item)


def _gather(completed: Iterable[Any], position: Callable[[Any], int], n: int, desc: str, unit: str) -> list[Any]:
    """The results of ``n`` futures, in input order, as ``completed`` yields them (``position``: a
    future's input index); the first error raised as :func:`task_error` makes it. concurrent.futures
    and Dask futures alike."""
    results: list[Any] = [None] * n
    with tqdm(total=n, desc=desc, unit=unit) as bar:
        for future in completed:
            error = future.exception()  # without the remote traceback
            if error is not None:
                raise task_error(error)
            results[position(future)] = future.result()
            bar.update()
    return results


def _dask_map(func: Callable[[T], R], items: list[T], scheduler: str, desc: str, unit: str) -> list[R]:
    """:func:`parallel_map` on the Dask cluster at ``scheduler``."""
    from dask.distributed import as_completed as dask_as_completed

    with dask_client(0, scheduler) as client:
        futures = client.map(func, items, pure=False)
        index = {future.key: n for n, future in enumerate(futures)}
        try:
            return _gather(dask_as_completed(futures), lambda future: index[future.key], len(futures), desc, unit)
        except BaseException:  # a task's error or Ctrl-C: stop the other tasks
            with contextlib.suppress(Exception):
                client.cancel(futures)
            raise


def prefetched(items: Sequence[T], load: Callable[[T], R]) -> Iterator[tuple[T, Future]]:
    """``(item, future of load(item))`` in order; one background thread loads the next item meanwhile.

    For a loop that reads a file (mostly Python, holding the GIL) and then computes with a library that
    releases the GIL (torch): the next read overlaps the current computation. At most two loaded
    items are alive. ``future.result()`` returns the load's value or raises its error. Leaving the loop
    early cancels the loads not started.
    """
    pool = ThreadPoolExecutor(1, thread_name_prefix="prefetch")
    try:
        upcoming = pool.submit(load, items[0]) if items else None
        for n, item in enumerate(items):
            current = upcoming
            upcoming = pool.submit(load, items[n + 1]) if n + 1 < len(items) else None
            yield item, current
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
