from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from cxrclf.data import synthetic
from cxrclf.labels import NORMAL, TUBERCULOSIS

# A tiny encoder from scratch at 64 px: the phantoms' lungs are easy, and the tests stay fast.
TINY = {"encoder": "mobilenetv3_small_050", "pretrained": False, "image_size": 64, "batch_size": 8, "lr": 3e-3, "threads": 1}


@pytest.fixture(scope="session")
def phantom_nlm(tmp_path_factory) -> Path:
    """Montgomery phantoms at 64 px with their lung masks, in NLM's layout (read-only)."""
    root = tmp_path_factory.mktemp("nlm-masks")
    synthetic.write_nlm(root, {NORMAL: 20, TUBERCULOSIS: 20}, np.random.default_rng(5), size=64, set_name="montgomery", masks=True)
    return root


@pytest.fixture(scope="session")
def tiny_segmenter(phantom_nlm, tmp_path_factory) -> Path:
    """A lung segmentation run trained on the phantoms (8 epochs)."""
    from cxrclf.segment.train import SegmentTrainOptions, train_segmenter

    out = tmp_path_factory.mktemp("segment-runs") / "lung"
    train_segmenter(SegmentTrainOptions(nlm=phantom_nlm, out=out, epochs=8, seed=0, **TINY))
    return out
