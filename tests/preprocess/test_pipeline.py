"""preprocess_image and its stages on arrays."""

from __future__ import annotations

import numpy as np

from cxrclf.preprocess import PreprocessParams


def test_pad_keeps_aspect_and_sixteen_bit_large_input():
    from cxrclf.preprocess.pipeline import preprocess_stages

    wide = np.zeros((1000, 4000), np.uint16)
    wide[:, 1000:3000] = 40000
    params = PreprocessParams(size=64, fit="pad", channels=1)
    stages = preprocess_stages(wide, params)
    assert stages["input"].shape == (256, 1024)  # limited to work_size on the long side
    out = stages["final"][..., 0]
    assert out.shape == (64, 64)
    assert out[:20].max() == 0 and out[-20:].max() == 0  # padding above and below
    assert out[32, 32] > 100


def test_the_lung_step_is_handed_its_segmenter_and_never_loads_one():
    import pytest

    from cxrclf.preprocess import preprocess_image

    params = PreprocessParams(size=32, lung="crop", lung_model="/no/such/segmentation-run", lung_model_sha256="0" * 64)
    with pytest.raises(ValueError, match="needs the segmenter its parameters name"):  # loading this run would be a CxrclfError: not found
        preprocess_image(np.zeros((64, 64), np.uint8), params)
