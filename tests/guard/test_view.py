"""The view a run never saw: AP films told from the DICOM header, or from the pixels by the shipped check."""

from __future__ import annotations

import json

import numpy as np
import pytest

from cxrclf.data import imageio, synthetic
from cxrclf.errors import CxrclfError
from cxrclf.guard import input_warnings
from cxrclf.guard.checks import header_warnings, view_families, view_family
from cxrclf.guard.view import (BUILTIN_FOLDER, PROVENANCE, WEIGHTS, ViewCheck, builtin_view_check, fit_view_check, load_view_check,
                               pixel_view_warning, view_features)
from cxrclf.inference import plane_from_file
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
    assert plane_from_file((str(path), None, 64, ("PA",)))["warnings"] == ["AP view (DICOM ViewPosition AP); this run saw PA films only"]
    assert plane_from_file((str(path), None, 64, ("AP", "PA")))["warnings"] == []
    assert plane_from_file((str(path), None, 64))["warnings"] == []  # callers that name no views: as before


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
    assert builtin_view_check().probability(sixteen_bit) == pytest.approx(builtin_view_check().probability(features), abs=1e-3)
    image = np.random.default_rng(2).integers(0, 256, (96, 96), dtype=np.uint8)  # at 96 px: no resizing
    low, high = np.percentile(image.astype(np.float64), (1, 99))
    oracle = hog(np.clip((image - low) / (high - low), 0, 1), orientations=9, pixels_per_cell=(12, 12), cells_per_block=(2, 2), block_norm="L2-Hys")
    assert np.allclose(view_features(image), oracle)


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


def test_shipped_check_matches_its_provenance():
    provenance = json.loads((BUILTIN_FOLDER / PROVENANCE).read_text())
    check = builtin_view_check()
    assert provenance["weights"]["sha256"] == sha256_file(BUILTIN_FOLDER / WEIGHTS) == check.sha256
    assert provenance["features"] == {"side": check.side, "cell": check.cell, "orientations": check.orientations, "block": check.block,
                                      "count": check.coef.size}
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
        assert warning is not None and warning.startswith("looks like an AP film (0.") and warning.endswith("this run saw PA films only"), name
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
