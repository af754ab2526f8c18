"""File helpers shared by every stage: atomic writes, JSON, CSV and markdown tables, hashes, and safe output folders.

Every output cxrclf writes goes through here, so the rules hold everywhere:

- a file is written to a temporary sibling and renamed into place (never half-written);
- an output folder is checked before anything is written or deleted: it must not be, contain
  or lie inside any input, must not sit under a file, and an existing folder is replaced
  (``overwrite``) only when cxrclf itself made it (its marker file, or the files its stage
  writes), and only after the new folder is complete (written beside it, then swapped);
- one writer at a time: a lock beside the folder names the process that holds it;
- hidden partial folders that a killed command left behind are removed on the next start.
"""

from __future__ import annotations

import contextlib
import csv
import errno
import hashlib
import io
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from cxrclf.errors import CxrclfError

__all__ = [
    "MARKER", "atomic_file", "check_output_file", "check_output_path", "csv_text", "folder_lock", "json_text", "jsonable", "mark", "markdown_table", "output_kind", "read_csv_rows", "read_json", "refuse_overlap", "remove_stale_partials",
    "rebuilt_in_place", "sha256_file", "staged_folder", "swap_into_place", "writing_place", "write_bytes", "write_json", "write_new", "write_text",
]

MARKER = ".cxrclf"  # in every folder cxrclf makes; its content names the kind of output
# folders made before the marker existed are recognised by the files their stage writes
_LEGACY_SIGNS = {
    "fused": ("manifest.csv", "fuse_report.json"),
    "preprocessed": ("manifest.csv", "preprocess.json"),
    "run": ("config.json",),
    "cv": ("cv_summary.json",),
    "evaluation": ("metrics.json", "predictions.csv"),
    "demo": ("sources", "data"),
}


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current


_UMASK = _umask()


# ----------------------------------------------------------------------------- files

def write_bytes(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through a temporary sibling and an atomic rename."""
    path = Path(path)
    _make_parent(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
        with os.fdopen(fd, "wb") as handle:
            handle.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_new(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path``, a file that must not exist yet, inside a folder being staged.

    For the thousands of files of a folder that :func:`staged_folder` makes appear in one
    rename (on any error it is removed whole): no temporary sibling and rename per file,
    which halves the directory operations, and in a folder of 55,000 images those are most
    of the system time (docs/performance.md, "Scale"). Never overwrites: an existing
    ``path`` is an error.
    """
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for any new file
    with os.fdopen(fd, "wb") as handle:
        handle.write(data)


@contextlib.contextmanager
def atomic_file(path: Path) -> Iterator[Path]:
    """A temporary sibling of ``path`` to fill (an output too large to hold as bytes), renamed to
    ``path`` when the block ends without error and removed otherwise; usual permissions, as :func:`write_bytes`."""
    path = Path(path)
    _make_parent(path)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, 0o666 & ~_UMASK)
    finally:
        os.close(fd)
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def write_text(path: Path, text: str) -> None:
    write_bytes(path, text.encode("utf-8"))


def jsonable(value):
    """``value`` with NaN as null, numpy scalars as Python numbers and choices as their strings (JSON has none of them)."""
    import math
    from enum import Enum

    if isinstance(value, Enum):
        return value.value
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if isinstance(value, float) and math.isnan(value):
        return None
    if hasattr(value, "item") and type(value).__module__ == "numpy":
        return jsonable(value.item())
    return value


def json_text(document) -> str:
    return json.dumps(jsonable(document), indent=2) + "\n"


def write_json(path: Path, document) -> None:
    write_text(path, json_text(document))


def read_json(path: Path, what: str = "JSON file") -> dict:
    """A JSON object from ``path``; a one-line error for a missing, unreadable or non-object file."""
    path = Path(path)
    try:
        document = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as exc:
        raise CxrclfError(f"{what} not found", path) from exc
    except IsADirectoryError as exc:
        raise CxrclfError(f"{what} is a folder", path) from exc
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CxrclfError(f"{what} is not valid JSON ({exc.__class__.__name__})", path) from exc
    except OSError as exc:
        raise CxrclfError(f"cannot read {what} ({exc.strerror})", path) from exc
    if not isinstance(document, dict):
        raise CxrclfError(f"{what} must hold a JSON object", path)
    return document


def read_csv_rows(path: Path, required: Sequence[str], what: str) -> list[dict[str, str]]:
    """The rows of a user's CSV (keys and values stripped); one-line errors for a missing file, bad encoding or missing columns."""
    path = Path(path)
    if not path.is_file():
        raise CxrclfError(f"{what} not found", path)
    try:
        with open(path, newline="", encoding="utf-8-sig") as handle:
            reader = csv.DictReader(handle)
            header = [h.strip() for h in (reader.fieldnames or [])]
            rows = [{(k or "").strip(): (v or "").strip() for k, v in row.items()} for row in reader]
    except (UnicodeDecodeError, csv.Error) as exc:
        raise CxrclfError(f"not a readable CSV ({exc.__class__.__name__})", path) from exc
    for needed in required:
        if needed not in header:
            raise CxrclfError(f"missing column {needed!r} (a {what} needs {','.join(required)})", path)
    return rows


def csv_text(header: Sequence[str], rows: Iterable[Sequence]) -> str:
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(header)
    writer.writerows(rows)
    return buffer.getvalue()


def markdown_table(header: Sequence[str], rows: Iterable[Sequence], align: str | None = None) -> list[str]:
    """The lines of a markdown table: ``header``, its rule, one line per row (cells written with ``str``).

    ``align`` holds one letter per column, ``l`` or ``r`` (``---:``); left throughout when left out.
    An unnamed header cell (the row labels' column) is written ``| |``; every other cell ``| text |``.
    """
    rule = "|" + "".join("---:|" if side == "r" else "---|" for side in (align or "l" * len(header)))
    named = "|" + "".join(f" {name} |" if name else " |" for name in header)
    return [named, rule] + ["| " + " | ".join(str(cell) for cell in row) + " |" for row in rows]


def read_tensors(path: Path, what: str, missing: str) -> tuple[dict[str, str], dict]:
    """(metadata, numpy tensors) of a ``.safetensors`` file; a missing, damaged or foreign file is one error naming ``what``.

    ``missing`` is the reason given when there is no such file (it says what to do).
    """
    from safetensors import safe_open

    path = Path(path)
    if not path.is_file():
        raise CxrclfError(missing if not path.exists() else f"not a file (expected a .safetensors {what})", path)
    try:
        with safe_open(str(path), framework="numpy") as handle:
            return handle.metadata() or {}, {name: handle.get_tensor(name) for name in handle.keys()}
    except Exception as exc:  # safetensors raises its own error types for every kind of damage
        raise CxrclfError(f"not a readable {what} file: damaged or foreign ({exc.__class__.__name__}: {exc})", path) from exc


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _make_parent(path: Path) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except (FileExistsError, NotADirectoryError) as exc:
        raise CxrclfError("cannot write here: a file stands where a folder is needed", _first_file_above(path)) from exc


def _first_file_above(path: Path) -> Path:
    for parent in reversed(Path(path).absolute().parents):
        if parent.exists() and not parent.is_dir():
            return parent
    return Path(path).parent


# ----------------------------------------------------------------------------- output folders

def mark(folder: Path, kind: str) -> None:
    """Record that cxrclf made ``folder`` (a ``kind`` of output); only such folders are ever replaced."""
    write_text(Path(folder) / MARKER, kind + "\n")


def output_kind(folder: Path) -> str | None:
    """The kind of cxrclf output ``folder`` is, or ``None`` when cxrclf did not make it."""
    folder = Path(folder)
    marker = folder / MARKER
    if marker.is_file():
        with contextlib.suppress(OSError, UnicodeDecodeError):
            return marker.read_text(encoding="utf-8").strip() or None
    for kind, names in _LEGACY_SIGNS.items():
        if all((folder / name).exists() for name in names):
            return kind
    return None


def _inside(inner: Path, outer: Path) -> bool:
    return inner == outer or outer in inner.parents


def refuse_overlap(out: Path, inputs: Iterable[Path | None]) -> None:
    """Refuse an output that is, contains or lies inside any of ``inputs`` (files or folders)."""
    resolved = Path(out).resolve()
    for given in inputs:
        if given is None:
            continue
        source = Path(given).resolve()
        if _inside(resolved, source) or _inside(source, resolved):
            relation = "is" if resolved == source else "contains" if _inside(source, resolved) else "lies inside"
            raise CxrclfError(f"output {relation} the input {given}; choose an output outside every input", out)


def check_output_path(out: Path, overwrite: bool, inputs: Iterable[Path | None] = (), kinds: Sequence[str] = (), resumable: bool = False) -> bool:
    """Refuse an output that would destroy data; True when ``out`` exists and will be replaced.

    ``inputs`` are every file or folder the command reads: the output may not be one of them,
    contain one, or lie inside one. ``kinds`` are the cxrclf outputs that ``overwrite`` may
    replace (empty: any cxrclf output). With ``resumable``, an existing folder without
    ``overwrite`` is the caller's to judge (False is returned) instead of an error.
    """
    out = Path(out)
    refuse_overlap(out, inputs)
    if out.exists() and not out.is_dir():
        raise CxrclfError("output exists and is not a folder", out)
    above = _first_file_above(out / "x")
    if above.exists() and not above.is_dir():
        raise CxrclfError("output would be under a file, not a folder", above)
    if not out.is_dir() or not any(p.name != MARKER for p in out.iterdir()):
        return False
    if not overwrite:
        if resumable:
            return False
        raise CxrclfError("output folder exists and is not empty (pass --overwrite to replace it)", out)
    kind = output_kind(out)
    if kind is None or (kinds and kind not in kinds):
        what = "was not made by cxrclf" if kind is None else f"is a cxrclf {kind} folder, not a {' or '.join(kinds)} folder"
        raise CxrclfError(f"output folder {what}; refusing to replace it (choose another output folder)", out)
    return True


def check_output_file(path: Path, inputs: Iterable[Path | None] = (), suffix: str | None = None, overwrite: bool = True) -> Path:
    """Refuse an output file that is an input, a folder, under a file, of the wrong type, or (unless ``overwrite``) exists."""
    path = Path(path)
    refuse_overlap(path, inputs)
    if suffix and path.suffix.lower() != suffix:
        raise CxrclfError(f"output must be a {suffix} file", path)
    if path.is_dir():
        raise CxrclfError(f"output is a folder; name a {suffix or 'file'} to write", path)
    above = _first_file_above(path)
    if above.exists() and not above.is_dir():
        raise CxrclfError("output would be under a file, not a folder", above)
    if path.exists() and not overwrite:
        raise CxrclfError("output exists (pass --overwrite to replace it)", path)
    return path


def remove_stale_partials(out: Path) -> list[Path]:
    """Remove ``.<name>.partial-*`` and ``.<name>.old-*`` beside ``out`` (call with its lock held)."""
    out = Path(out)
    removed = []
    if out.parent.is_dir():
        for stale in out.parent.glob(f".{out.name}.partial-*"):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
        for stale in out.parent.glob(f".{out.name}.old-*"):
            shutil.rmtree(stale, ignore_errors=True)
            removed.append(stale)
    return removed


@contextlib.contextmanager
def folder_lock(out: Path, wait: bool = False) -> Iterator[Path]:
    """Hold ``.<name>.lock`` beside ``out`` for the duration; a second writer is refused with the holder's PID,
    or with ``wait`` waits for it (a shared cache that the first process builds and the others then read).

    The lock is an ``flock``: the kernel releases it when the process dies, however it dies,
    so a killed command never leaves a folder locked (a stale file is reused, not trusted).
    The file is removed on release; a taker checks that the file it locked is still the one
    at the path, so removal cannot let two writers in.
    """
    import fcntl

    out = Path(out)
    _make_parent(out)
    path = out.parent / f".{out.name}.lock"
    while True:
        handle = open(path, "a+")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | (0 if wait else fcntl.LOCK_NB))
        except OSError as exc:
            if exc.errno not in (errno.EAGAIN, errno.EACCES):
                handle.close()
                raise
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            raise CxrclfError(f"in use by process {holder} (another cxrclf command is writing it); wait for it or choose another output", out) from None
        try:
            if os.stat(path).st_ino == os.fstat(handle.fileno()).st_ino:
                break
        except FileNotFoundError:
            pass
        handle.close()  # the holder before us removed the file after we opened it: take the new one
    try:
        handle.seek(0)
        handle.truncate()
        handle.write(str(os.getpid()))
        handle.flush()
        yield path
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        handle.close()


@contextlib.contextmanager
def staged_folder(out: Path, overwrite: bool, kind: str, inputs: Iterable[Path | None] = (), kinds: Sequence[str] = ()) -> Iterator[Path]:
    """Yield a temporary folder beside ``out``; on success it replaces ``out`` in one rename.

    Holds the folder's lock throughout; checks the output first (:func:`check_output_path`);
    marks the new folder as cxrclf's ``kind``. On any error the temporary folder is removed
    and ``out`` is left as it was.
    """
    out = Path(out)
    inputs = list(inputs)
    check_output_path(out, overwrite, inputs, kinds or (kind,))
    with folder_lock(out):
        remove_stale_partials(out)
        replace = check_output_path(out, overwrite, inputs, kinds or (kind,))  # again, now that we hold the lock
        stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
        os.chmod(stage, 0o777 & ~_UMASK)
        try:
            yield stage
            mark(stage, kind)
        except BaseException:
            shutil.rmtree(stage, ignore_errors=True)
            raise
        swap_into_place(stage, out, replace)


@contextlib.contextmanager
def rebuilt_in_place(out: Path, overwrite: bool, kind: str, inputs: Iterable[Path | None] = ()) -> Iterator[Path]:
    """Yield ``out`` itself to be built in place (for outputs that record their own absolute paths).

    An existing cxrclf folder is moved aside first and removed only when the new one is
    complete; on any error the partial new folder is removed and the old one put back.
    """
    out = Path(out)
    inputs = list(inputs)
    check_output_path(out, overwrite, inputs, (kind,))
    with folder_lock(out):
        remove_stale_partials(out)
        replace = check_output_path(out, overwrite, inputs, (kind,))
        trash = None
        if replace:
            trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
            os.replace(out, trash / "old")
        try:
            out.mkdir(parents=True, exist_ok=True)
            mark(out, kind)
            yield out
        except BaseException:
            shutil.rmtree(out, ignore_errors=True)
            if trash is not None:
                os.replace(trash / "old", out)
                shutil.rmtree(trash, ignore_errors=True)
            raise
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)


@contextlib.contextmanager
def writing_place(out: Path, kind: str, replace: bool) -> Iterator[Path]:
    """Where a command writes its folder (the caller holds its lock): ``out`` itself when new or
    resumed, or, when it replaces an earlier output, a stage beside it swapped in once complete."""
    out = Path(out)
    if not replace:
        out.mkdir(parents=True, exist_ok=True)
        mark(out, kind)
        yield out
        return
    stage = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.partial-"))
    os.chmod(stage, 0o777 & ~_UMASK)
    try:
        yield stage
    except BaseException:
        shutil.rmtree(stage, ignore_errors=True)
        raise
    mark(stage, kind)
    swap_into_place(stage, out, replace=True)


def swap_into_place(stage: Path, out: Path, replace: bool) -> None:
    """Rename a finished ``stage`` to ``out``; an old ``out`` is moved aside first, then removed."""
    if replace and out.exists():
        trash = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
        os.replace(out, trash / "old")
        os.replace(stage, out)
        shutil.rmtree(trash, ignore_errors=True)
    else:
        if out.is_dir():  # empty but for a marker (check_output_path allowed it): rename needs the name free
            (out / MARKER).unlink(missing_ok=True)
            out.rmdir()
        os.replace(stage, out)
