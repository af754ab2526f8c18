"""The catalogue runner: feed a command a bad input and check that it fails as the interface says.

For every case, whatever the command:

- the exit code is the expected one (2 for a user error);
- a user error is one line, the last on stderr, ``cxrclf: error: <path>: <reason>``, naming
  the expected file, with the expected words in it; no traceback anywhere;
- every input (files and folders, also those outside ``tmp_path``) is byte-identical after;
- the whole ``tmp_path`` tree (the working directory during the run) changes only under the
  case's allowed output locations: no stray, partial, hidden or half-written file is left
  anywhere else.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

ONE_LINE_ERROR = re.compile(r"^cxrclf: error: (?P<rest>.+)$")


@dataclass
class Prepared:
    """What a case's setup built: the command line and the paths the checks watch."""
    argv: list
    inputs: list[Path]                        # must be byte-identical before and after
    allowed: list[Path] = field(default_factory=list)   # the only places under tmp_path that may change
    names: list[Path] = field(default_factory=list)     # the path the error line must name (any of these)
    check: Callable[["object"], None] | None = None     # further assertions on the result


@dataclass
class Case:
    name: str
    setup: Callable[["Env"], Prepared]
    exit_code: int | tuple[int, ...] = 2
    message: tuple[str, ...] = ()   # substrings of the one-line error (exit 2) or of stdout + stderr
    absent: tuple[str, ...] = ()    # substrings the output must not hold

    def __str__(self) -> str:
        return self.name


class Env:
    """What a setup may use: ``tmp`` (the working directory) and the read-only session data, fetched lazily."""

    def __init__(self, tmp: Path, request, stack: contextlib.ExitStack):
        self.tmp, self._request, self.stack = tmp, request, stack

    def fixture(self, name: str):
        return self._request.getfixturevalue(name)

    @property
    def prep(self) -> Path:
        return self.fixture("preprocessed_synthetic")

    @property
    def fused(self) -> Path:
        return self.fixture("fused_synthetic")

    @property
    def run(self) -> Path:
        return self.fixture("trained_run")

    def source(self, name: str) -> Path:
        return self.fixture("synthetic_source_folders")[name]

    def copy(self, source: Path, relative: str) -> Path:
        target = self.tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        if Path(source).is_dir():
            # other tests evaluate the shared run: its evaluation folders are not part of the input
            shutil.copytree(source, target, symlinks=True, ignore=shutil.ignore_patterns("evaluation-*"))
        else:
            shutil.copy2(source, target)
        return target

    def xray(self, relative: str, index: int = 0) -> Path:
        """A copy of one of the fused synthetic X-rays (a real PNG)."""
        return self.copy(self.fixture("good_pngs")[index], relative)

    def write(self, relative: str, data: bytes | str) -> Path:
        target = self.tmp / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data.encode() if isinstance(data, str) else data)
        return target

    def hold_lock_in_subprocess(self, out: Path) -> int:
        """Another process holds ``out``'s lock for the rest of the case; returns its PID."""
        code = ("import sys; from pathlib import Path; from cxrclf.io import folder_lock\n"
                "with folder_lock(Path(sys.argv[1])):\n    print('held', flush=True); sys.stdin.read()\n")
        process = subprocess.Popen([sys.executable, "-c", code, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)

        def release() -> None:
            process.stdin.close()
            process.wait(timeout=30)

        self.stack.callback(release)
        assert process.stdout.readline().strip() == "held", "the helper process could not take the lock"
        return process.pid


def tree_hashes(root: Path) -> dict[str, str]:
    """relative path -> sha256 of every file (folders and links recorded too); a file root as ``.``."""
    root = Path(root)
    if root.is_symlink():
        return {".": "link:" + os.readlink(root)}
    if root.is_file():
        return {".": _sha256(root)}
    if not root.exists():
        return {}
    found = {}
    for folder, dirs, files in os.walk(root):
        base = Path(folder)
        for name in dirs + files:
            path = base / name
            relative = path.relative_to(root).as_posix()
            if path.is_symlink():
                found[relative] = "link:" + os.readlink(path)
            elif path.is_dir():
                found[relative + "/"] = "folder"
            else:
                found[relative] = _sha256(path)
    return found


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _changed(before: dict[str, str], after: dict[str, str]) -> list[str]:
    return sorted(p for p in set(before) | set(after) if before.get(p) != after.get(p))


def _under(relative: str, allowed: Iterable[str]) -> bool:
    relative = relative.rstrip("/")
    return any(relative == a or relative.startswith(a + "/") for a in allowed)


def _relative_to(path: Path, root: Path) -> str:
    return Path(os.path.abspath(path)).relative_to(Path(os.path.abspath(root))).as_posix()


def run_case(case: Case, env: Env, run_cli) -> object:
    prepared = case.setup(env)
    inputs = [Path(p) for p in prepared.inputs]
    assert all(p.exists() for p in inputs), "a case's input is missing before the run"
    inputs_before = {p: tree_hashes(p) for p in inputs}
    tree_before = tree_hashes(env.tmp)

    result = run_cli(*prepared.argv)

    tree_after = tree_hashes(env.tmp)
    output = result.stdout + result.stderr
    assert "Traceback" not in output, output
    codes = case.exit_code if isinstance(case.exit_code, tuple) else (case.exit_code,)
    assert result.exit_code in codes, f"exit {result.exit_code}, expected {case.exit_code}\nstdout: {result.stdout}\nstderr: {result.stderr}"

    if result.exit_code == 2:
        # progress and information may precede it on stderr; the error is one line, the last
        lines = [line for line in result.stderr.splitlines() if line.strip()]
        errors = [line for line in lines if line.startswith("cxrclf:")]
        assert len(errors) == 1 and lines[-1] == errors[0], f"not one error line at the end of stderr: {result.stderr!r}"
        lines = errors
        matched = ONE_LINE_ERROR.match(lines[0])
        assert matched, f"not a cxrclf error line: {lines[0]!r}"
        if prepared.names:
            accepted = {str(p) for p in prepared.names} | {str(Path(p).resolve()) for p in prepared.names}
            assert any(matched["rest"].startswith(p + ": ") for p in accepted), f"{lines[0]!r} does not name {prepared.names[0]}"
        haystack = lines[0]
    else:
        haystack = output
    for words in case.message:
        assert words in haystack, f"{words!r} not in {haystack!r}"
    for words in case.absent:
        assert words not in haystack, f"{words!r} in {haystack!r}"

    for path in inputs:
        changed = _changed(inputs_before[path], tree_hashes(path))
        assert not changed, f"input {path} changed: {changed[:10]}"
    allowed = [_relative_to(p, env.tmp) for p in prepared.allowed]
    outside = [p for p in _changed(tree_before, tree_after) if not _under(p, allowed)]
    assert not outside, f"written outside {allowed or 'nothing'}: {outside[:10]}"

    if prepared.check is not None:
        prepared.check(result)
    return result
