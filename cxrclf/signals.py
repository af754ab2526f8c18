"""SIGTERM as an orderly exit: cleanup runs, one line on stderr, exit code 143.

By default SIGTERM ends a Python process at once: no ``finally`` or ``except
BaseException`` block runs, so a staged output folder (:func:`cxrclf.io.staged_folder`)
stays behind. After :func:`exit_on_sigterm`, SIGTERM raises :class:`Terminated` in the main
thread instead. It unwinds like any exception (the worker pool is killed, the staged
folder removed) and, being a ``SystemExit``, ends the process with exit code 143
(128 + SIGTERM, what a shell reports for a process killed by SIGTERM) and no traceback.
The line ``cxrclf: terminated`` is printed as the process exits, after the cleanup and
after any progress bar has been closed.
"""

from __future__ import annotations

import atexit
import signal
import sys
import threading

__all__ = ["EXIT_CODE", "MESSAGE", "Terminated", "exit_on_sigterm"]

EXIT_CODE = 128 + int(signal.SIGTERM)
MESSAGE = "cxrclf: terminated"

_state = {"installed": False, "terminated": False}


class Terminated(SystemExit):
    """SIGTERM was received; raised in the main thread once :func:`exit_on_sigterm` ran."""

    def __init__(self) -> None:
        super().__init__(EXIT_CODE)


def exit_on_sigterm() -> bool:
    """Make SIGTERM raise :class:`Terminated`. Call it first thing in the entry point.

    Returns False, and changes nothing, outside the main thread (where Python cannot
    install signal handlers).
    """
    if threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signal.SIGTERM, _on_sigterm)
    if not _state["installed"]:
        atexit.register(_report_termination)
        _state["installed"] = True
    return True


def _on_sigterm(signum: int, frame: object) -> None:
    if _state["terminated"]:
        return  # a second SIGTERM while the first one's cleanup runs: let it finish
    _state["terminated"] = True
    raise Terminated()


def _report_termination() -> None:
    if _state["terminated"]:
        print(MESSAGE, file=sys.stderr, flush=True)
