"""One thread policy for every command: OpenMP waits passively, the thread count comes from the user or the CPUs we may use."""

from __future__ import annotations

import os

import pytest

from cxrclf import threads
from cxrclf.errors import CxrclfError


def test_passive_wait_unless_the_user_chose():
    environ = {}
    threads.passive_wait(environ)
    assert environ == {"OMP_WAIT_POLICY": "PASSIVE"}
    environ = {"OMP_WAIT_POLICY": "ACTIVE"}
    threads.passive_wait(environ)
    assert environ == {"OMP_WAIT_POLICY": "ACTIVE"}
    environ = {"GOMP_SPINCOUNT": "300000"}  # a spin the user chose is a policy too
    threads.passive_wait(environ)
    assert environ == {"GOMP_SPINCOUNT": "300000"}
    environ = {"KMP_BLOCKTIME": "1"}  # Intel's and LLVM's setting, which GNU OpenMP never reads: no choice for it
    threads.passive_wait(environ)
    assert environ == {"KMP_BLOCKTIME": "1", "OMP_WAIT_POLICY": "PASSIVE"}
    environ = {"GOMP_SPINCOUNT": " "}
    threads.passive_wait(environ)
    assert environ == {"GOMP_SPINCOUNT": " ", "OMP_WAIT_POLICY": "PASSIVE"}


def test_default_threads_follow_omp_num_threads_then_the_affinity(monkeypatch):
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0, 2, 5}, raising=False)
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    assert threads.default_threads() == 3
    for unusable in ("", "0", "two"):
        monkeypatch.setenv("OMP_NUM_THREADS", unusable)
        assert threads.default_threads() == 3 == threads.available_cpus()
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {1}, raising=False)
    assert threads.default_threads() == 1


def test_use_threads_sets_pytorch(monkeypatch):
    import torch

    before = torch.get_num_threads()
    try:
        assert threads.use_threads(2) == 2 and torch.get_num_threads() == 2
        monkeypatch.setenv("OMP_NUM_THREADS", "1")
        assert threads.use_threads(None) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    with pytest.raises(CxrclfError, match="at least 1"):
        threads.use_threads(0)


def test_torch_threads_restores_the_count_even_after_an_error_unless_told_not_to():
    import torch

    before = torch.get_num_threads()
    other = 2 if before != 2 else 3
    try:
        with pytest.raises(RuntimeError, match="inside"):
            with threads.torch_threads(other):
                assert torch.get_num_threads() == other
                raise RuntimeError("inside")
        assert torch.get_num_threads() == before
        with threads.torch_threads(other, restore=False):
            pass
        assert torch.get_num_threads() == other
    finally:
        torch.set_num_threads(before)


def test_the_cli_sets_the_wait_policy_first(run_cli, monkeypatch):
    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert run_cli("--help").exit_code == 0
    assert os.environ["OMP_WAIT_POLICY"] == "PASSIVE"
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    run_cli("--help")
    assert os.environ["OMP_WAIT_POLICY"] == "ACTIVE"


@pytest.mark.parametrize("command", [["train", "--model", "m", "--strategy", "oversample", "--classes", "3"], ["segment", "train"], ["evaluate"], ["predict", "x.png"], ["explain", "x.png"]])
def test_every_torch_command_takes_threads(run_cli, command):
    result = run_cli(*command, "--threads", "0")
    assert result.exit_code == 2 and "--threads" in result.stderr and "greater than or equal to 1" in result.stderr
