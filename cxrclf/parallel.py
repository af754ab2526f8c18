"""Process-parallel map over images, in input order, with a progress callback.

Worker processes never outlive the command that started them. Each worker asks the kernel
(Linux) for SIGKILL when its parent dies, and also watches its parent itself, so a parent
killed with SIGKILL, or dead of any other cause, takes its workers with it. A parent that
is interrupted (Ctrl-C, or SIGTERM with :func:`cxrclf.signals.exit_on_sigterm`) kills its
busy workers and waits for them before the exception unwinds further, so the cleanup
above (a staged output folder) runs only after no worker can write into it any more.
"""

from __future__ import annotations

import multiprocessing
import os
import signal
import sys
import threading
import time
from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence, TypeVar

__all__ = ["map_images"]

T = TypeVar("T")
R = TypeVar("R")

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>
_PARENT_POLL_SECONDS = 1.0
_ORPHANED_EXIT_CODE = 1
_KILLED_WORKER_WAIT_SECONDS = 10.0


def map_images(function: Callable[[T], R], tasks: Sequence[T], workers: int, progress: Callable[[int, int], None] | None = None) -> list[R]:
    """``[function(t) for t in tasks]``, in ``workers`` processes when more than one.

    ``function`` must be a module-level function (it is pickled). ``progress(done, total)``
    is called after each result. When ``function`` raises, the tasks not yet started are
    dropped, the running ones finish, and the error is raised here; on KeyboardInterrupt,
    SIGTERM (see :mod:`cxrclf.signals`) or any other BaseException the workers are killed.
    """
    total = len(tasks)
    results: list[R] = []
    if workers <= 1 or total < 2:
        for task in tasks:
            results.append(function(task))
            if progress:
                progress(len(results), total)
        return results
    chunksize = max(1, min(16, total // (workers * 8)))
    chunks = [tasks[start:start + chunksize] for start in range(0, total, chunksize)]
    pool = _worker_pool(min(workers, total))
    try:
        # Every chunk is submitted from this thread before any result is awaited, so this
        # thread, which stays in this function until the pool is shut down, starts every
        # worker (see _worker_pool for why that matters).
        futures = [pool.submit(_run_chunk, function, chunk) for chunk in chunks]
        for future in futures:
            for result in future.result():
                results.append(result)
                if progress:
                    progress(len(results), total)
    except Exception:
        pool.shutdown(wait=True, cancel_futures=True)
        raise
    except BaseException:
        _kill_workers(pool)
        raise
    pool.shutdown(wait=True)
    return results


def _run_chunk(function: Callable[[T], R], chunk: Sequence[T]) -> list[R]:
    return [function(task) for task in chunk]


def _worker_pool(workers: int) -> ProcessPoolExecutor:
    """A pool whose workers die with this process.

    PR_SET_PDEATHSIG fires when the *thread* that forked the worker exits, not the process.
    In CPython 3.11's concurrent/futures/process.py, with the fork start method (Linux's
    default), ``submit()`` calls ``_start_executor_manager_thread()``, which forks all
    ``max_workers`` workers (``_launch_processes``) in the thread that called ``submit()``,
    before the manager thread even exists (python/cpython#90622); with spawn or forkserver,
    ``submit()`` starts them one per call (``_adjust_process_count``), again in the calling
    thread. The manager thread only starts replacements for workers that reach
    ``max_tasks_per_child``, which this pool does not set. ``map_images`` submits every
    chunk before it waits, so all workers are children of its calling thread, which outlives
    the pool. (multiprocessing.Pool would not do better: it also starts replacements from a
    helper thread, and it hangs, instead of raising, when a worker is killed.)
    """
    context = multiprocessing.get_context()
    # With fork and spawn this process is the workers' parent. With forkserver the server
    # is, and it outlives this process as long as any worker lives (each worker holds the
    # server's "alive" pipe), so there the workers watch this process by its pid instead.
    creator_is_parent = context.get_start_method() in ("fork", "spawn")
    return ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_start_worker, initargs=(os.getpid(), creator_is_parent))


def _start_worker(creator: int, creator_is_parent: bool = True) -> None:
    """Pool initializer, in each worker: make the worker die with the process that made the pool."""
    _ask_for_parent_death_signal()
    parent = os.getppid()
    if (creator_is_parent and parent != creator) or not _running(creator):
        os._exit(_ORPHANED_EXIT_CODE)  # the creator died before the kernel was asked
    # Inherited through fork, the parent's SIGTERM handler would turn SIGTERM into an
    # exception that the pool's worker loop catches and reports, leaving the worker alive.
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    # Ctrl-C reaches the whole process group; the parent gets it and stops the pool.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    threading.Thread(target=_exit_when_orphaned, args=(creator, parent), name="cxrclf-parent-watch", daemon=True).start()


def _ask_for_parent_death_signal() -> None:
    """``prctl(PR_SET_PDEATHSIG, SIGKILL)`` on Linux; elsewhere the parent watch covers it."""
    if not sys.platform.startswith("linux"):
        return
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(_PR_SET_PDEATHSIG, int(signal.SIGKILL), 0, 0, 0)
    except (OSError, AttributeError):
        pass


def _exit_when_orphaned(creator: int, parent: int) -> None:
    """Exit once this process is reparented or its creator is gone, whatever it is doing."""
    while True:
        time.sleep(_PARENT_POLL_SECONDS)
        if os.getppid() != parent or not _running(creator):
            os._exit(_ORPHANED_EXIT_CODE)


def _running(pid: int) -> bool:
    if os.name != "posix":
        return True  # Windows' os.kill(pid, 0) would terminate the process, not probe it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # the pid now belongs to another user's process
    return True


def _kill_workers(pool: ProcessPoolExecutor) -> None:
    """Stop at once: kill the workers, busy ones included, and wait until they are gone.

    ``shutdown(cancel_futures=True)`` would still wait for the running tasks. Pending futures
    are not cancelled here: on CPython 3.11 the manager thread, noticing the killed workers,
    sets an exception on every pending future and fails with a traceback on cancelled ones.
    ``_processes`` is private but present from 3.8 to 3.14 (3.14 adds ``kill_workers()``).
    """
    processes = list((getattr(pool, "_processes", None) or {}).values())
    for process in processes:
        process.kill()
    for process in processes:
        process.join(_KILLED_WORKER_WAIT_SECONDS)
    pool.shutdown(wait=True)
