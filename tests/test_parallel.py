"""cxrclf.parallel and cxrclf.signals: results in order, and no worker outlives its parent.

The process tests read /proc, so they run on Linux only. Each starts a parent process,
finds its workers, stops the parent the way a user or a scheduler would (SIGKILL,
SIGTERM) and asserts what is left afterwards: worker processes, exit code, folders.
"""

from __future__ import annotations

import multiprocessing
import os
import queue
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from cxrclf import parallel
from cxrclf.data.fuse import _decode_one

REPO = Path(__file__).resolve().parents[1]
WORKER_SLEEP_SECONDS = 30.0
GONE_WITHIN_SECONDS = 5.0

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc")


# --- run in worker processes: module level, so that workers can import them ------------------

def square_with_pid(number: int) -> tuple[int, int]:
    return number * number, os.getpid()


def fail_on_three(number: int) -> int:
    if number == 3:
        raise ValueError("three")
    return number


def sleep_in_worker(seconds: float) -> int:
    os.write(1, f"worker {os.getpid()}\n".encode())  # one write: workers share the pipe
    time.sleep(seconds)
    return os.getpid()


def slow_decode(task):
    """``cxrclf fuse``'s real worker, then a long pause: a SIGTERM surely finds it busy."""
    result = _decode_one(task)
    time.sleep(WORKER_SLEEP_SECONDS)
    return result


# --- /proc and subprocess helpers ----------------------------------------------------------------

def _stat_fields(pid: int) -> list[str] | None:
    """Fields after the command name of /proc/<pid>/stat: [state, ppid, ...]; None if gone."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    return stat.rsplit(")", 1)[1].split()


def _alive(pid: int) -> bool:
    """Running or sleeping; a zombie (dead, waiting to be reaped by init) counts as gone."""
    fields = _stat_fields(pid)
    return fields is not None and fields[0] not in ("Z", "X")


def _children(pid: int) -> set[int]:
    children = set()
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            fields = _stat_fields(int(entry.name))
            if fields is not None and int(fields[1]) == pid and fields[0] not in ("Z", "X"):
                children.add(int(entry.name))
    return children


def _still_alive_after(pids: set[int], seconds: float) -> set[int]:
    deadline = time.monotonic() + seconds
    alive = {pid for pid in pids if _alive(pid)}
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = {pid for pid in alive if _alive(pid)}
    return alive


def _kill_leftovers(pids: set[int]) -> None:
    """Do not leave 30-second sleepers behind when a test fails."""
    for pid in pids:
        if _alive(pid):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


def _start(code: str) -> tuple[subprocess.Popen, queue.Queue]:
    """``python -c code`` with the repository importable, and a queue of its stdout lines."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    process = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: queue.Queue = queue.Queue()

    def pump() -> None:
        for line in process.stdout:
            lines.put(line.strip())

    threading.Thread(target=pump, daemon=True).start()
    return process, lines


def _worker_pids(process: subprocess.Popen, lines: queue.Queue, count: int, timeout: float = 15.0) -> set[int]:
    """The pids that ``sleep_in_worker`` printed, once ``count`` distinct ones have."""
    pids: set[int] = set()
    deadline = time.monotonic() + timeout
    while len(pids) < count:
        try:
            line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
        except queue.Empty:
            process.kill()
            pytest.fail(f"only {len(pids)} of {count} workers started; stderr: {process.communicate()[1]}")
        if line.startswith("worker "):
            pids.add(int(line.split()[1]))
    return pids


def _slow_map_script(before: str = "") -> str:
    return (
        "from cxrclf.parallel import map_images\n"
        "from tests.test_parallel import sleep_in_worker\n"
        f"{before}\n"
        f"map_images(sleep_in_worker, [{WORKER_SLEEP_SECONDS}] * 4, workers=2)\n"
        "print('finished', flush=True)\n"
    )


# --- map_images ----------------------------------------------------------------------------------

def test_map_images_keeps_input_order_and_reports_progress():
    calls: list[tuple[int, int]] = []
    results = parallel.map_images(square_with_pid, list(range(50)), workers=2, progress=lambda done, total: calls.append((done, total)))
    assert [value for value, _ in results] == [n * n for n in range(50)]
    assert calls == [(done, 50) for done in range(1, 51)]
    worker_pids = {pid for _, pid in results}
    assert os.getpid() not in worker_pids and 1 <= len(worker_pids) <= 2


def test_map_images_serial_path_runs_in_this_process():
    calls: list[tuple[int, int]] = []
    results = parallel.map_images(square_with_pid, [3, 4], workers=1, progress=lambda done, total: calls.append((done, total)))
    assert results == [(9, os.getpid()), (16, os.getpid())]
    assert calls == [(1, 2), (2, 2)]


@linux_only
def test_map_images_raises_the_task_error_and_leaves_no_worker():
    before = _children(os.getpid())
    with pytest.raises(ValueError, match="three"):
        parallel.map_images(fail_on_three, list(range(40)), workers=2)
    assert _children(os.getpid()) - before == set()


@linux_only
def test_worker_whose_parent_died_before_it_started_exits_at_once():
    not_the_parent = os.getppid()  # alive, but not the worker's parent
    worker = multiprocessing.get_context("fork").Process(target=parallel._start_worker, args=(not_the_parent,))
    worker.start()
    worker.join(GONE_WITHIN_SECONDS)
    assert worker.exitcode == 1


@pytest.mark.slow
@linux_only
def test_forkserver_worker_whose_creator_died_before_it_started_exits_at_once():
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout
    worker = multiprocessing.get_context("fork").Process(target=parallel._start_worker, args=(int(dead), False))
    worker.start()
    worker.join(GONE_WITHIN_SECONDS)
    assert worker.exitcode == 1


# --- parent killed or terminated -----------------------------------------------------------------

@pytest.mark.slow
@linux_only
@pytest.mark.parametrize("start_method", ["fork", "spawn", "forkserver"])
def test_workers_die_when_the_parent_is_killed(start_method):
    process, lines = _start(_slow_map_script(f"import multiprocessing\nmultiprocessing.set_start_method({start_method!r})\n"))
    workers = _worker_pids(process, lines, 2)
    try:
        process.kill()
        assert process.wait(GONE_WITHIN_SECONDS) == -signal.SIGKILL
        assert _still_alive_after(workers, GONE_WITHIN_SECONDS) == set()
    finally:
        _kill_leftovers(workers)


@pytest.mark.slow
@linux_only
def test_workers_die_when_the_parent_is_killed_even_without_prctl():
    """The second line of defence: each worker watches its parent's pid (about once a second)."""
    script = _slow_map_script(
        "import multiprocessing\n"
        "from cxrclf import parallel\n"
        "multiprocessing.set_start_method('fork')  # workers inherit the patch below\n"
        "parallel._ask_for_parent_death_signal = lambda: None\n"
    )
    process, lines = _start(script)
    workers = _worker_pids(process, lines, 2)
    try:
        process.kill()
        process.wait(GONE_WITHIN_SECONDS)
        assert _still_alive_after(workers, GONE_WITHIN_SECONDS) == set()
    finally:
        _kill_leftovers(workers)


@pytest.mark.slow
@linux_only
def test_sigterm_exits_143_with_one_line_and_kills_busy_workers():
    process, lines = _start(_slow_map_script("from cxrclf import signals\nsignals.exit_on_sigterm()\n"))
    workers = _worker_pids(process, lines, 2)
    try:
        process.terminate()
        started = time.monotonic()
        assert process.wait(GONE_WITHIN_SECONDS) == 143
        assert time.monotonic() - started < GONE_WITHIN_SECONDS  # did not wait for the 30 s tasks
        assert _still_alive_after(workers, 0) == set()
        assert process.stderr.read() == "cxrclf: terminated\n"
    finally:
        _kill_leftovers(workers)


@pytest.mark.slow
@linux_only
def test_second_sigterm_during_cleanup_lets_the_cleanup_finish():
    script = (
        "import os, signal, time\n"
        "from cxrclf import signals\n"
        "signals.exit_on_sigterm()\n"
        "try:\n"
        "    print('ready', flush=True)\n"
        "    time.sleep(30)\n"
        "finally:\n"
        "    os.kill(os.getpid(), signal.SIGTERM)\n"
        "    time.sleep(0.5)\n"
        "    print('cleaned up', flush=True)\n"
    )
    process, lines = _start(script)
    assert lines.get(timeout=15) == "ready"
    process.terminate()
    assert process.wait(GONE_WITHIN_SECONDS) == 143
    assert lines.get(timeout=1) == "cleaned up"
    assert process.stderr.read() == "cxrclf: terminated\n"


def test_exit_on_sigterm_does_nothing_outside_the_main_thread():
    from cxrclf import signals

    handler = signal.getsignal(signal.SIGTERM)
    installed: list[bool] = []
    thread = threading.Thread(target=lambda: installed.append(signals.exit_on_sigterm()))
    thread.start()
    thread.join()
    assert installed == [False]
    assert signal.getsignal(signal.SIGTERM) is handler


# --- end to end: cxrclf fuse ---------------------------------------------------------------------

@pytest.mark.slow
@linux_only
def test_sigterm_during_fuse_removes_the_partial_folder_and_the_workers(tmp_path):
    from cxrclf.data import synthetic

    synthetic.write_nlm(tmp_path / "nlm", {"normal": 6, "tuberculosis": 6}, np.random.default_rng(0), size=64)
    args = ["fuse", "--nlm", str(tmp_path / "nlm"), "--out", str(tmp_path / "fused"), "--workers", "2"]
    # The real CLI and fuse; only the per-image work is slowed (with a pause after the real
    # decoding) so that the SIGTERM surely arrives while both workers are busy.
    script = (
        "from cxrclf import signals\n"
        "signals.exit_on_sigterm()\n"
        "from cxrclf.data import fuse\n"
        "from tests.test_parallel import slow_decode\n"
        "fuse._decode_one = slow_decode\n"
        "from cxrclf.cli import main\n"
        f"main({args!r})\n"
    )
    process, _ = _start(script)
    workers: set[int] = set()
    try:
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            decoded = list(tmp_path.glob(".fused.partial-*/images/*.png"))
            workers = _children(process.pid)
            if decoded and len(workers) == 2:
                break
            assert process.poll() is None, process.communicate()[1]
            time.sleep(0.05)
        assert decoded and len(workers) == 2, "fuse did not start decoding in 15 s"
        process.terminate()
        assert process.wait(GONE_WITHIN_SECONDS) == 143
        stderr = process.stderr.read()
        assert stderr.strip().splitlines()[-1] == "cxrclf: terminated" and "Traceback" not in stderr
        assert _still_alive_after(workers, 0) == set()
        left = sorted(p.name for p in tmp_path.iterdir() if p.name != ".fused.lock")  # the lock file stays, unlocked
        assert left == ["nlm"]  # no fused, no .fused.partial-*
    finally:
        process.kill()
        _kill_leftovers(workers)
