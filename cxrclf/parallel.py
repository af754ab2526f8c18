"""Process-parallel map over images, in input order, with a progress callback."""

from __future__ import annotations

from concurrent.futures import ProcessPoolExecutor
from typing import Callable, Sequence, TypeVar

T = TypeVar("T")
R = TypeVar("R")


def map_images(function: Callable[[T], R], tasks: Sequence[T], workers: int, progress: Callable[[int, int], None] | None = None) -> list[R]:
    """``[function(t) for t in tasks]``, in ``workers`` processes when more than one.

    ``function`` must be a module-level function (it is pickled). ``progress(done, total)``
    is called after each result.
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
    with ProcessPoolExecutor(max_workers=min(workers, total)) as pool:
        for result in pool.map(function, tasks, chunksize=chunksize):
            results.append(result)
            if progress:
                progress(len(results), total)
    return results
