"""The one user-facing error type.

Library code raises :class:`CxrclfError` for anything the user can fix (a missing
folder, a bad column, an unreadable run). The CLI prints it as one line and exits 2.
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["CxrclfError"]


class CxrclfError(Exception):
    """A problem with the user's input, reported as one line naming the file and reason."""

    def __init__(self, reason: str, path: str | Path | None = None):
        self.reason = reason
        self.path = None if path is None else str(path)
        super().__init__(f"{self.path}: {reason}" if self.path else reason)
