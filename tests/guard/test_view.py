"""The view a run never saw: AP films told from the DICOM header, or from the pixels by the shipped check."""

from __future__ import annotations

import json
import re

import numpy as np
import pytest

from cxrclf.data import imageio, synthetic
from cxrclf.errors import CxrclfError
from cxrclf.guard import input_warnings
from cxrclf.guard.checks import header_warnings, view_families, view_family
from cxrclf.guard.view import (BUILTIN_FOLDER, LUNG_MARGIN, PROVENANCE, WEIGHTS, ViewCheck, builtin_view_check, check_features, fit_view_check,
                               load_view_check, lung_crop, pixel_view_warning, view_features)
from cxrclf.inference import plane_from_file
from cxrclf.planes import PlaneTask
from cxrclf.io import sha256_file
from cxrclf.runs import DataSpec, Fields


@pytest.fixture(scope="module")
def phantom() -> np.ndarray:
    return synthetic.to_uint8(synthetic.phantom("normal", np.random.default_rng(0), 128).image)


def _dicom(folder, image, view: str):
    path = folder / f"view-{view.replace(' ', '_') or 'none'}.dcm"
    synthetic.write_dicom(path, image, patient_id="p", view=view, compression="none")
    return imageio.decode(path)


# ----------------------------------------------------------------------------- the header


@pytest.mark.parametrize("view, family", [("AP", "AP"), ("AP Supine", "AP"), ("ap supine", "AP"), ("AP  ERECT", "AP"), ("PA", "PA"),
                                          ("pa", "PA"), ("LL", "LL"), ("", ""), ("APEX", "APEX")])
def test_view_family(view, family):
    assert view_family(view) == family


def test_view_families_are_distinct_and_sorted():
    assert view_families(["PA", "AP SUPINE", "AP", "", "pa"]) == ("AP", "PA")


@pytest.mark.filterwarnings("ignore:Invalid value for VR CS")  # "AP supine": lower case is invalid DICOM, and found in the wild
@pytest.mark.parametrize("view", ["AP", "AP SUPINE", "AP supine"])
def test_ap_dicoms_are_flagged_by_name_for_a_pa_run_and_pass_for_a_run_with_ap(tmp_path, phantom, view):
    decoded = _dicom(tmp_path, phantom, view)
    assert decoded.info.view_position == view.upper()
    expected = f"AP view (DICOM ViewPosition {view.upper()}); this run saw PA films only"
    assert header_warnings(decoded.info, trained_views=("PA",)) == [expected]
    assert input_warnings(decoded.pixels, decoded.info, trained_views=("PA",)) == [expected]
    assert input_warnings(decoded.pixels, decoded.info, trained_views=("PA", "AP")) == []
    assert input_warnings(decoded.pixels, decoded.info, trained_views=("AP SUPINE", "PA")) == []
    assert input_warnings(decoded.pixels, decoded.info) == []  # no run views given: AP is a frontal view


def test_plane_from_file_holds_the_header_against_the_run_views(tmp_path, phantom):
    path = tmp_path / "ap.dcm"
    synthetic.write_dicom(path, phantom, patient_id="p", view="AP", compression="none")
    assert plane_from_file(PlaneTask(str(path), None, 64, ("PA",))).warnings == ("AP view (DICOM ViewPosition AP); this run saw PA films only",)
    assert plane_from_file(PlaneTask(str(path), None, 64, ("AP", "PA"))).warnings == ()
    assert plane_from_file(PlaneTask(str(path), None, 64)).warnings == ()  # callers that name no views: as before


def test_a_pa_dicom_is_trusted_and_the_pixels_are_not_asked(tmp_path, phantom, monkeypatch):
    import cxrclf.guard.view as view

    monkeypatch.setattr(view, "builtin_view_check", lambda: pytest.fail("the pixel check ran although the header names the view"))
    decoded = _dicom(tmp_path, phantom, "PA")
    assert input_warnings(decoded.pixels, decoded.info, trained_views=("PA",)) == []


# ----------------------------------------------------------------------------- the pixels


def test_pixel_check_names_the_side_it_sees(phantom):
    check = builtin_view_check()
    probability = check.probability_ap(phantom)
    assert probability < 0.01  # the phantom is drawn as an upright PA film
    assert pixel_view_warning(phantom, ("PA",)) is None
    assert pixel_view_warning(phantom, ("AP",)) == f"looks like a PA film ({1 - probability:.2f}); this run saw AP films only"


def test_no_pixel_check_for_a_run_that_saw_both_views(phantom):
    class Refuses(ViewCheck):
        def probability_ap(self, pixels):
            raise AssertionError("computed although the run saw both views")

    refuses = Refuses(mean=np.zeros(1), scale=np.ones(1), coef=np.zeros(1), intercept=0.0)
    assert pixel_view_warning(phantom, ("PA", "AP SUPINE"), refuses) is None


def test_pixel_check_runs_only_where_the_header_is_silent_and_every_rule_passed(tmp_path, phantom, monkeypatch):
    import cxrclf.guard.view as view

    ap_looking = ViewCheck(mean=np.zeros(1764), scale=np.ones(1764), coef=np.zeros(1764), intercept=3.0)  # P(AP) = 0.95 for any image
    monkeypatch.setattr(view, "builtin_view_check", lambda: ap_looking)
    looks = "looks like an AP film (0.95); this run saw PA films only"
    assert input_warnings(phantom, None, trained_views=("PA",)) == [looks]
    silent = _dicom(tmp_path, phantom, "")  # a DICOM without ViewPosition
    assert silent.info.view_position == "" and input_warnings(silent.pixels, silent.info, trained_views=("PA",)) == [looks]
    assert input_warnings(phantom, None) == []  # no views given
    flat = np.full((64, 64), 128, np.uint8)
    assert input_warnings(flat, None, trained_views=("PA",)) == ["constant or nearly constant image (1st-99th percentile spread 0.000)"]


def test_features_are_hog_of_the_stretched_thumbnail(phantom):
    from skimage.feature import hog

    features = view_features(phantom)
    assert features.shape == (1764,) and features.dtype == np.float64  # 7 x 7 blocks of 2 x 2 cells x 9 orientations
    # the stretch removes gain and bit depth (up to the rounding of the thumbnail's grey levels)
    sixteen_bit = view_features(phantom.astype(np.uint16) * 257)
    assert np.abs(sixteen_bit - features).mean() < 0.02
    check = builtin_view_check()
    assert check.probability_ap(phantom.astype(np.uint16) * 257) == pytest.approx(check.probability_ap(phantom), abs=1e-3)
    image = np.random.default_rng(2).integers(0, 256, (96, 96), dtype=np.uint8)  # at 96 px: no resizing
    low, high = np.percentile(image.astype(np.float64), (1, 99))
    oracle = hog(np.clip((image - low) / (high - low), 0, 1), orientations=9, pixels_per_cell=(12, 12), cells_per_block=(2, 2), block_norm="L2-Hys")
    assert np.allclose(view_features(image), oracle)


def test_lung_crop_cuts_the_mask_box_at_the_image_size():
    mask = np.zeros((128, 128), bool)
    mask[32:96, 16:48] = mask[40:90, 80:112] = True  # two fields: box rows 32-95, columns 16-111
    pixels = np.arange(256 * 512, dtype=np.uint16).reshape(256, 512)  # twice the mask's height, four times its width
    assert np.array_equal(lung_crop(pixels, mask, 0.0), pixels[64:192, 64:448])
    # widened by a quarter of the box's mean side, (64 + 96) / 2: 20 mask pixels, clipped at the left and right edges
    assert np.array_equal(lung_crop(pixels, mask, 0.25), pixels[24:232, 0:512])
    assert lung_crop(pixels, np.zeros((128, 128), bool)) is pixels  # no lungs found: the whole image
    odd = np.zeros((100, 100), bool)
    odd[10:30, 10:30] = True
    assert lung_crop(np.zeros((33, 33), np.uint8), odd, 0.0).shape == (7, 7)  # rows 3.3-9.9 of 33, rounded outwards: 3-10


class _KnownMask:
    """A segmenter that finds the same two fields in any plane (rows 32-95, columns 16-111) and records the planes it is handed."""

    input_size, threshold, sha256 = 128, 0.5, "b" * 64

    def __init__(self):
        self.planes = []

    def plane_probabilities(self, plane, folded=False):
        self.planes.append(plane)
        probabilities = np.zeros((128, 128), np.float32)
        probabilities[32:96, 16:48] = probabilities[40:90, 80:112] = 0.9
        return probabilities


def test_check_features_are_hog_of_the_whole_image_then_of_the_lungs_box():
    pixels = np.random.default_rng(3).integers(0, 4096, (512, 384), dtype=np.uint16)
    segmenter = _KnownMask()
    features = check_features(pixels, LUNG_MARGIN, segmenter)
    assert features.shape == (2 * 1764,) and features.dtype == np.float64
    assert np.array_equal(features[:1764], view_features(pixels))
    # the box widened by 0.15 of (64 + 96) / 2 = 12 mask pixels: rows 20-107 and columns 4-123 of 128, at 4 and 3 image pixels per mask pixel
    assert np.array_equal(features[1764:], view_features(pixels[80:432, 12:372]))
    (plane,) = segmenter.planes
    assert plane.shape == (128, 128) and 0.0 <= plane.min() < plane.max() <= 1.0
    assert np.array_equal(check_features(pixels, None, segmenter), features[:1764]) and len(segmenter.planes) == 1  # no lungs' box: no network


def test_a_check_refuses_the_masks_of_another_segmenter():
    def check(segmenter_sha256: str) -> ViewCheck:  # P(AP) = logistic(1) for any image
        return ViewCheck(mean=np.zeros(3528), scale=np.ones(3528), coef=np.zeros(3528), intercept=1.0, lung_margin=LUNG_MARGIN,
                         segmenter_sha256=segmenter_sha256)

    pixels = np.random.default_rng(4).integers(0, 256, (200, 200), dtype=np.uint8)
    with pytest.raises(CxrclfError, match="another lung segmenter"):
        check("a" * 64).probability_ap(pixels, _KnownMask())
    assert check("b" * 64).probability_ap(pixels, _KnownMask()) == pytest.approx(1 / (1 + np.exp(-1.0)))


def test_the_lung_checks_mask_frames_the_box_without_another_pass():
    pixels = np.random.default_rng(3).integers(0, 4096, (512, 384), dtype=np.uint16)
    segmenter = _KnownMask()
    features = check_features(pixels, LUNG_MARGIN, segmenter)
    mask = np.zeros((128, 128), bool)
    mask[32:96, 16:48] = mask[40:90, 80:112] = True
    assert np.array_equal(check_features(pixels, LUNG_MARGIN, segmenter, mask), features) and len(segmenter.planes) == 1
    other = np.zeros((128, 128), bool)
    other[10:20, 10:20] = True  # the mask handed in is the one used
    assert not np.array_equal(check_features(pixels, LUNG_MARGIN, segmenter, other), features) and len(segmenter.planes) == 1


def test_input_warnings_hand_the_lung_checks_mask_to_the_view_check(phantom, monkeypatch):
    import cxrclf.guard.view as view
    from cxrclf.guard.lungs import TURNS, lung_findings

    handed = []
    monkeypatch.setattr(view, "pixel_view_warning", lambda pixels, views, check=None, mask=None: handed.append(mask))
    assert input_warnings(phantom, None, trained_views=("PA",), lungs=True) == []
    (mask,) = handed
    assert mask is not None and np.array_equal(mask, lung_findings(phantom).mask) and mask.shape == (128, 128) and mask.mean() > 0.1
    turned = np.ascontiguousarray(np.rot90(phantom))
    assert input_warnings(turned, None, trained_views=("PA",), lungs=True) == [TURNS[3]] and len(handed) == 1  # flagged: no view check
    assert input_warnings(phantom, None, trained_views=("PA",)) == [] and handed[-1] is None  # no lung checks: the view check finds its own


def test_without_a_segmenter_a_check_on_the_lungs_box_does_not_run(phantom, monkeypatch):
    import os

    from cxrclf.segment import ort

    monkeypatch.setattr(ort, "_NETWORKS", {os.getpid(): None})  # neither onnxruntime nor PyTorch installed
    needs_lungs = ViewCheck(mean=np.zeros(3528), scale=np.ones(3528), coef=np.zeros(3528), intercept=3.0, lung_margin=LUNG_MARGIN)
    assert pixel_view_warning(phantom, ("PA",), needs_lungs) is None
    whole_image = ViewCheck(mean=np.zeros(1764), scale=np.ones(1764), coef=np.zeros(1764), intercept=3.0)
    assert pixel_view_warning(phantom, ("PA",), whole_image) == "looks like an AP film (0.95); this run saw PA films only"


def test_probability_equals_the_fitted_scikit_learn_pipeline():
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(0)
    features = rng.normal(size=(120, 30)) * rng.uniform(0.1, 5, 30) + rng.normal(size=30)
    is_ap = features[:, 0] + 0.5 * rng.normal(size=120) > features[:, 0].mean()
    check = fit_view_check(features, is_ap, c=0.1)
    oracle = make_pipeline(StandardScaler(), LogisticRegression(C=0.1, class_weight="balanced", max_iter=10_000)).fit(features, is_ap)
    assert np.allclose(check.probability(features), oracle.predict_proba(features)[:, 1], atol=1e-9)
    with pytest.raises(ValueError, match="both AP and PA"):
        fit_view_check(features, np.ones(120, bool))


def test_saved_check_loads_the_same_and_hashes_the_same_each_time(tmp_path, phantom):
    rng = np.random.default_rng(1)
    features = rng.normal(size=(40, 1764))
    check = fit_view_check(features, np.arange(40) % 2 == 0)
    first, second = check.save(tmp_path / "a.safetensors"), check.save(tmp_path / "b.safetensors")
    assert sha256_file(first) == sha256_file(second)
    loaded = load_view_check(first)
    assert loaded.sha256 == sha256_file(first) and loaded.threshold == 0.5 and (loaded.side, loaded.cell) == (96, 12)
    assert loaded.probability_ap(phantom) == pytest.approx(check.probability_ap(phantom), abs=1e-12)
    assert loaded.lung_margin is None and loaded.segmenter_sha256 == ""


def test_a_check_on_the_lungs_box_saves_its_margin_and_segmenter_and_a_version_1_file_still_loads(tmp_path):
    from safetensors.numpy import save

    features = np.random.default_rng(5).normal(size=(40, 3528))
    check = fit_view_check(features, np.arange(40) % 2 == 0, lung_margin=0.2, segmenter_sha256="c" * 64)
    loaded = load_view_check(check.save(tmp_path / "lungs.safetensors"))
    assert (loaded.lung_margin, loaded.segmenter_sha256, loaded.coef.size) == (0.2, "c" * 64, 3528)
    assert np.allclose(loaded.probability(features), check.probability(features), atol=1e-12)
    # a file of cxrclf before the lungs' box: the whole image only
    tensors = {"mean": np.zeros(1764), "scale": np.ones(1764), "coef": np.full(1764, 0.01), "intercept": np.array([0.5])}
    settings = {"version": "1", "side": 96, "cell": 12, "orientations": 9, "block": 2, "threshold": 0.5}
    (tmp_path / "v1.safetensors").write_bytes(save(tensors, metadata={"cxrclf-view-check": json.dumps(settings)}))
    old = load_view_check(tmp_path / "v1.safetensors")
    assert old.lung_margin is None and old.coef.size == 1764 and old.intercept == 0.5
    # a version-2 file whose tensors hold one image's features: damaged
    settings.update(version="2", lung_margin=0.15, segmenter_sha256="")
    (tmp_path / "short.safetensors").write_bytes(save(tensors, metadata={"cxrclf-view-check": json.dumps(settings)}))
    with pytest.raises(CxrclfError, match="tensor shapes do not fit 3528 features"):
        load_view_check(tmp_path / "short.safetensors")


def test_damaged_or_foreign_files_are_refused(tmp_path):
    truncated = tmp_path / "cut.safetensors"
    truncated.write_bytes((BUILTIN_FOLDER / WEIGHTS).read_bytes()[:500])
    with pytest.raises(CxrclfError, match="not a readable view check file"):
        load_view_check(truncated)
    from safetensors.numpy import save

    foreign = tmp_path / "foreign.safetensors"
    foreign.write_bytes(save({"mean": np.zeros(3)}, metadata={"format": "something-else"}))
    with pytest.raises(CxrclfError, match="damaged or foreign"):
        load_view_check(foreign)
    with pytest.raises(CxrclfError, match="not found"):
        load_view_check(tmp_path / "missing.safetensors")


# ----------------------------------------------------------------------------- the shipped check


@pytest.mark.slow
def test_shipped_check_matches_its_provenance():
    provenance = json.loads((BUILTIN_FOLDER / PROVENANCE).read_text())
    check = builtin_view_check()
    assert provenance["weights"]["sha256"] == sha256_file(BUILTIN_FOLDER / WEIGHTS) == check.sha256
    from cxrclf.segment.infer import builtin_segmenter

    assert provenance["features"] == {"side": check.side, "cell": check.cell, "orientations": check.orientations, "block": check.block,
                                      "count": check.coef.size, "lung_margin": check.lung_margin, "segmenter": "builtin",
                                      "segmenter_sha256": check.segmenter_sha256}
    assert check.lung_margin == LUNG_MARGIN and check.coef.size == 2 * 1764 and check.segmenter_sha256 == builtin_segmenter().sha256
    assert provenance["model"]["threshold"] == check.threshold and provenance["command"].startswith("python benchmarks/views.py --ship")
    counts = provenance["data"]["per_source"]
    assert provenance["data"]["films"] == sum(v["PA"] + v["AP"] for v in counts.values()) and len(provenance["data"]["sha256"]) == 64
    assert set(provenance["heldout"]["patients"]["per_source"]) == {"rsna", "nih", "cohen", "all"}
    assert set(provenance["heldout"]["source_held_out"]) == {"rsna", "nih", "cohen"}


@pytest.mark.integration
def test_pixel_check_on_real_films(shared_data):
    """NIH AP films (PNG: no header) are flagged; PA films of hospitals the check never saw pass."""
    nih = shared_data / "nih" / "images"
    for name in ("00000211_013.png", "00000061_012.png"):  # View Position AP in Data_Entry_2017.csv
        warning = pixel_view_warning(imageio.read_image(nih / name), ("PA",))
        assert re.fullmatch(r"looks like an AP film \((0\.[5-9]\d|1\.00)\); this run saw PA films only", warning or ""), (name, warning)
        assert pixel_view_warning(imageio.read_image(nih / name), ("PA", "AP")) is None
    shenzhen = shared_data / "shenzhen" / "ChinaSet_AllFiles" / "CXR_png"
    montgomery = shared_data / "montgomery" / "MontgomerySet" / "CXR_png"
    for path in (shenzhen / "CHNCXR_0005_0.png", montgomery / "MCUCXR_0002_0.png", shared_data / "extra-dicom" / "RG1_J2KI.dcm"):
        decoded = imageio.decode(path)
        assert builtin_view_check().probability_ap(decoded.pixels) < 0.5, path.name
        assert input_warnings(decoded.pixels, decoded.info, trained_views=("PA",)) == [], path.name
    # an RSNA AP DICOM is flagged from its header alone, the view named
    rsna = sorted((shared_data / "rsna" / "stage_2_train_images").glob("*.dcm"))
    ap = next(imageio.decode(p) for p in rsna if imageio.read_dicom_fields(p, ("ViewPosition",))["ViewPosition"] == "AP")
    assert header_warnings(ap.info, trained_views=("PA",)) == ["AP view (DICOM ViewPosition AP); this run saw PA films only"]


# ----------------------------------------------------------------------------- what a run records


def test_runs_without_recorded_views_are_taken_as_pa():
    old = DataSpec.parse(Fields({"folder": "/data", "manifest_sha256": "x"}, "data.", None))
    assert old.views == () and old.trained_views == ("PA",)
    mixed = DataSpec.parse(Fields({"folder": "/data", "views": ["AP", "AP SUPINE", "PA"]}, "data.", None))
    assert mixed.views == ("AP", "AP SUPINE", "PA") and mixed.trained_views == ("AP", "AP SUPINE", "PA")
    with pytest.raises(CxrclfError, match="field data.views must be a list of strings"):
        DataSpec.parse(Fields({"folder": "/data", "views": "PA"}, "data.", None))
