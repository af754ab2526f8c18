"""How many CPU threads PyTorch uses, and how its OpenMP threads wait: one policy for every command.

OpenMP threads that finish a parallel region early spin for their peers by default. On
cores another process also uses, the peer is descheduled and the spinning burns the time
it needs: a 64 px training step on 2 shared cores fell from 133 img/s (one thread) to 10
img/s (two). ``OMP_WAIT_POLICY=PASSIVE`` makes waiting threads sleep instead; it is read
once, when PyTorch loads its OpenMP runtime, so :func:`passive_wait` must run before
``import torch`` (the CLI calls it first thing; measurements in docs/performance.md, "Scale").

Sleeping has a price on idle cores: waking a thread for every parallel region made a 64 px
step 14% slower (128 px: 10%) than spinning. A bounded spin does not buy it back without
losing the busy machine (``GOMP_SPINCOUNT=10000`` ran as fast as the spinning default on idle
cores and fell to 0.59x of one idle thread beside a busy process; 1000 kept the busy machine,
0.85x, and ran no faster than passive on idle cores), so passive it is. A user who owns the
machine chooses otherwise with ``OMP_WAIT_POLICY`` or ``GOMP_SPINCOUNT`` (what GNU OpenMP,
PyTorch's runtime on Linux, reads), and either is left as set.

The thread count is the user's (``--threads N``, else ``OMP_NUM_THREADS``), else the number
of CPUs this process may run on (``os.sched_getaffinity``: a ``taskset`` or container
limit counts, the machine's total does not).
"""

from __future__ import annotations

import contextlib
import os
from typing import Iterator, MutableMapping

from cxrclf.errors import CxrclfError

__all__ = ["WAIT_POLICY", "WAIT_SETTINGS", "available_cpus", "default_threads", "passive_wait", "torch_threads", "use_threads"]

WAIT_POLICY = "OMP_WAIT_POLICY"
WAIT_SETTINGS = (WAIT_POLICY, "GOMP_SPINCOUNT")  # each a user's way to tell GNU OpenMP how its threads wait


def passive_wait(environ: MutableMapping[str, str] = os.environ) -> None:
    """``OMP_WAIT_POLICY=PASSIVE`` unless the user said how threads wait (:data:`WAIT_SETTINGS`); child processes inherit it."""
    if not any(environ.get(name, "").strip() for name in WAIT_SETTINGS):
        environ[WAIT_POLICY] = "PASSIVE"


def available_cpus() -> int:
    """CPUs this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # macOS and Windows have no affinity call
        return max(1, os.cpu_count() or 1)


def default_threads() -> int:
    """``OMP_NUM_THREADS`` when the user set a valid one, else :func:`available_cpus`."""
    value = os.environ.get("OMP_NUM_THREADS", "").strip()
    if value.isdigit() and int(value) > 0:
        return int(value)
    return available_cpus()


def use_threads(threads: int | None = None) -> int:
    """Set PyTorch's intra-op thread count to ``threads`` (or :func:`default_threads`) and return it."""
    if threads is not None and (isinstance(threads, bool) or threads < 1):
        raise CxrclfError(f"the thread count must be at least 1, not {threads!r}")
    import torch

    count = threads or default_threads()
    if torch.get_num_threads() != count:
        torch.set_num_threads(count)
    return count


@contextlib.contextmanager
def torch_threads(count: int, restore: bool = True) -> Iterator[None]:
    """PyTorch's intra-op thread count at ``count`` for the duration, and the previous count back afterwards.

    A library call may run in a longer-lived process whose thread count is not its to keep.
    ``restore=False`` leaves ``count`` in place (and never reads the previous count): for
    worker processes, which stay on it.
    """
    import torch

    previous = torch.get_num_threads() if restore else None
    torch.set_num_threads(count)
    try:
        yield
    finally:
        if previous is not None:
            torch.set_num_threads(previous)
