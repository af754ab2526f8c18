from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

import pytest

from cxrclf import cli

SHARED_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "cxr-mini"

# Fixtures that train a network or run a pipeline of commands: every test that uses one, directly
# or through another fixture, is marked slow here; tests that train inline carry the mark themselves.
SLOW_FIXTURES = frozenset({
    "trained_run", "tiny_timm_run", "fold_ensemble", "evaluated_run", "evaluated", "evaluation",
    "tiny_segmenter", "lung_run", "builtin_run", "region_run", "prepared", "cv_run", "fused", "fused_synthetic",
})


def pytest_collection_modifyitems(items):
    for item in items:
        if SLOW_FIXTURES & set(getattr(item, "fixturenames", ())):
            item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="session", autouse=True)
def plane_cache_of_this_session(tmp_path_factory):
    """Training's plane caches go to a folder of this session, not the user's ~/.cache (subprocesses inherit it)."""
    import os

    previous = os.environ.get("CXRCLF_CACHE")
    os.environ["CXRCLF_CACHE"] = str(tmp_path_factory.mktemp("plane-cache"))
    yield
    if previous is None:
        os.environ.pop("CXRCLF_CACHE", None)
    else:
        os.environ["CXRCLF_CACHE"] = previous


@dataclass
class Result:
    exit_code: int
    stdout: str
    stderr: str


@pytest.fixture
def run_cli(capsys):
    """Run ``cxrclf ARGS`` in-process through the real entry point (error handling included)."""

    def run(*args: str) -> Result:
        capsys.readouterr()
        try:
            cli.main([str(a) for a in args])
            code = 0
        except SystemExit as exc:
            code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
        finally:
            cli._state["debug"] = False
        out = capsys.readouterr()
        return Result(code, out.out, out.err)

    return run


@pytest.fixture(scope="session")
def synthetic_sources(tmp_path_factory) -> dict[str, Path]:
    """Cohen, RSNA and NLM phantoms in the real layouts (read-only: copy before changing)."""
    from cxrclf.data import synthetic

    root = tmp_path_factory.mktemp("sources")
    return synthetic.write_sources(root, seed=0, per_class=12, size=128)


@pytest.fixture
def sources_copy(synthetic_sources, tmp_path) -> dict[str, Path]:
    """A private, writable copy of the synthetic sources."""
    out = {}
    for name, folder in synthetic_sources.items():
        out[name] = tmp_path / "src" / name
        shutil.copytree(folder, out[name])
    return out


@pytest.fixture(scope="session")
def shared_data() -> Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"real data not found at {SHARED_DATA} (a user's clone has no ../shared; CI has it)")
    return SHARED_DATA


@pytest.fixture(scope="session")
def preprocessed_synthetic(tmp_path_factory) -> Path:
    """A fused and preprocessed synthetic dataset at 64 px (read-only)."""
    from cxrclf.data import synthetic
    from cxrclf.data.fuse import FuseOptions, fuse
    from cxrclf.prepare import preprocess_folder
    from cxrclf.preprocess.params import PreprocessParams

    root = tmp_path_factory.mktemp("pipeline")
    sources = synthetic.write_sources(root / "sources", seed=3, per_class=24, size=128)
    fuse(FuseOptions(cohen=sources["cohen"], rsna=sources["rsna"], nlm=sources["nlm"], workers=1), root / "fused")
    preprocess_folder(root / "fused", root / "prep", PreprocessParams(size=64, work_size=128), workers=1)
    return root / "prep"


@pytest.fixture(scope="session")
def trained_run(preprocessed_synthetic, tmp_path_factory) -> Path:
    """A small 3-class run (resnet-baseline at 48 px, 6 epochs) on the synthetic data."""
    from cxrclf.train.loop import TrainOptions, train

    out = tmp_path_factory.mktemp("runs") / "baseline-RM3"
    train(TrainOptions(model="resnet-baseline", strategy="oversample", classes=3, data=preprocessed_synthetic, out=out,
                       epochs=6, patience=6, batch_size=16, lr=2e-3, image_size=48, threads=1))
    return out
