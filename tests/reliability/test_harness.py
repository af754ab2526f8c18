"""The catalogue runner catches what it claims to: stray writes, changed inputs, tracebacks, bad error lines."""

from __future__ import annotations

import contextlib
from types import SimpleNamespace

import pytest

from tests.reliability.harness import Case, Env, Prepared, run_case, tree_hashes


@pytest.fixture
def env(tmp_path):
    work = tmp_path / "work"
    work.mkdir()
    with contextlib.ExitStack() as stack:
        yield Env(work, None, stack)


def _case(inputs=(), allowed=(), names=(), exit_code=2, message=()):
    return Case("fake", lambda env: Prepared(["fake"], inputs=list(inputs), allowed=list(allowed), names=list(names)), exit_code, message)


def _cli(effect=lambda: None, code=2, stdout="", stderr=""):
    def run(*argv):
        effect()
        return SimpleNamespace(exit_code=code, stdout=stdout, stderr=stderr)
    return run


def test_tree_hashes_records_files_folders_and_links(tmp_path):
    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "f").write_bytes(b"abc")
    (tmp_path / "l").symlink_to("a")
    assert tree_hashes(tmp_path) == {
        "a/": "folder", "a/f": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad", "l": "link:a",
    }
    assert tree_hashes(tmp_path / "a" / "f") == {".": "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"}


def test_a_clean_refusal_passes(env):
    source = env.write("src/f", "data")
    line = f"cxrclf: error: {source}: output is the input\n"
    run_case(_case([source], names=[source], message=("is the input",)), env, _cli(stderr="progress\n" + line))


def test_writing_beside_the_allowed_output_fails(env):
    out = env.tmp / "out"

    def effect():
        (out / "images").mkdir(parents=True)
        (env.tmp / ".out.partial-x").mkdir()  # a stage left behind

    with pytest.raises(AssertionError, match=r"written outside \['out'\]: \['\.out\.partial-x/'\]"):
        run_case(_case(allowed=[out], exit_code=0), env, _cli(effect, code=0))


def test_a_new_empty_folder_counts_as_written(env):
    with pytest.raises(AssertionError, match="written outside"):
        run_case(_case(exit_code=0), env, _cli(lambda: (env.tmp / "proj").mkdir(), code=0))


def test_an_input_outside_tmp_that_changes_fails(env, tmp_path):
    source = tmp_path / "elsewhere" / "manifest.csv"
    source.parent.mkdir()
    source.write_text("a\n")
    with pytest.raises(AssertionError, match="input .* changed"):
        run_case(_case([source.parent], exit_code=0), env, _cli(lambda: source.write_text("b\n"), code=0))


def test_a_traceback_fails_whatever_the_exit_code(env):
    with pytest.raises(AssertionError, match="Traceback"):
        run_case(_case(exit_code=1), env, _cli(code=1, stderr="Traceback (most recent call last):\n  ...\n"))


@pytest.mark.parametrize("stderr", [
    "",
    "Usage: cxrclf fuse [OPTIONS]\nError: No such option\n",
    "cxrclf: error: {p}: first\ncxrclf: error: {p}: second\n",
    "cxrclf: error: {p}: reason\nmore text after it\n",
    "cxrclf: error: somewhere/else: reason\n",
    "cxrclf: error: {p}: a reason without the words\n",
])
def test_a_bad_error_line_fails(env, stderr):
    source = env.write("src/f", "data")
    with pytest.raises(AssertionError):
        run_case(_case([source], names=[source], message=("is the input",)), env, _cli(stderr=stderr.format(p=source)))


def test_a_wrong_exit_code_fails(env):
    with pytest.raises(AssertionError, match="exit 0, expected 2"):
        run_case(_case(), env, _cli(code=0))
