"""Fuse the real images in ../shared/data/cxr-mini (skipped where that folder is absent)."""

from __future__ import annotations

import json

import pytest

from cxrclf.data.manifest import read_manifest

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def fused(shared_data, tmp_path_factory):
    from cxrclf.data.fuse import FuseOptions, fuse

    out = tmp_path_factory.mktemp("real") / "fused"
    options = FuseOptions(cohen=shared_data / "cohen", rsna=shared_data / "rsna", nlm=shared_data / "montgomery", shenzhen=shared_data / "shenzhen", workers=2)
    report = fuse(options, out)
    return out, report


def test_exact_counts_after_filtering(fused):
    out, report = fused
    # Checked by hand against the metadata: Cohen PA X-rays are 110 COVID-19 (100 "COVID-19" +
    # 10 "COVID-19, ARDS"), 30 other pneumonia, 9 "No Finding" (4 "todo" excluded); RSNA PA
    # images are 28 Normal and 18 Lung Opacity (30 "Not Normal" excluded by default);
    # Montgomery 36/31 and Shenzhen 31/22 normal/TB.
    assert report["source_x_finding"] == {
        "cohen": {"normal": 9, "covid19": 110, "other_pneumonia": 30, "tuberculosis": 0, "total": 149},
        "montgomery": {"normal": 36, "covid19": 0, "other_pneumonia": 0, "tuberculosis": 31, "total": 67},
        "rsna": {"normal": 28, "covid19": 0, "other_pneumonia": 18, "tuberculosis": 0, "total": 46},
        "shenzhen": {"normal": 31, "covid19": 0, "other_pneumonia": 0, "tuberculosis": 22, "total": 53},
    }
    assert report["excluded"]["by_source"]["cohen"] == {"not an X-ray": 4, "unlabelled finding": 4, "view not recorded": 8, "view not requested": 24}
    # Montgomery's ManualMask/leftMask and rightMask hold 67 masks each under the X-rays' names
    assert report["lung_masks"] == {"montgomery": {"left": 67, "right": 67}}
    manifest = read_manifest(out)
    assert len(manifest) == 315 and manifest["sha256"].is_unique
    assert manifest[manifest.source == "montgomery"]["source_file"].str.startswith("MontgomerySet/CXR_png/").all()
    # RSNA: 216 label rows for 173 images; one row per image survives
    assert manifest[manifest.source == "rsna"]["source_file"].is_unique


def test_no_patient_in_two_splits(fused):
    out, _ = fused
    manifest = read_manifest(out)
    assert manifest.groupby("patient_id")["split"].nunique().max() == 1
    assert manifest.groupby("group")["split"].nunique().max() == 1
    assert set(manifest.split) == {"train", "val", "test"}
    covid_test_patients = manifest[(manifest.split == "test") & (manifest.finding == "covid19")].patient_id
    assert not set(covid_test_patients) & set(manifest[manifest.split == "train"].patient_id)


def test_clean_audit(fused, run_cli):
    out, _ = fused
    result = run_cli("audit", out, "--json")
    assert result.exit_code == 0
    found = json.loads(result.stdout)
    assert found["leakage"] is False and found["confounding"]["single_source_findings"] == {"covid19": "cohen"}
    assert found["confounding"]["warnings"] == ["covid19 comes only from cohen: a model can learn the archive instead of the disease"]


def test_real_dicoms_decode(shared_data):
    from cxrclf.data.imageio import read_image

    image = read_image(shared_data / "extra-dicom" / "RG1_J2KI.dcm")  # MONOCHROME1, JPEG 2000, 15 bits
    assert image.shape == (1955, 1841) and image.dtype.name == "uint16"
    # after inversion the mediastinum (centre) is brighter than the lungs beside it
    h, w = image.shape
    assert image[h // 3: h // 2, w // 2 - 40: w // 2 + 40].mean() > image[h // 3: h // 2, w // 5: w // 5 + 80].mean()


def test_preprocess_the_real_set(fused, tmp_path_factory):
    import cv2

    from cxrclf.prepare import preprocess_folder
    from cxrclf.preprocess.params import PreprocessParams

    out, _ = fused
    prep = tmp_path_factory.mktemp("real-prep") / "prep"
    summary = preprocess_folder(out, prep, PreprocessParams(), workers=2, figures=2)
    assert summary["images"] == 315 and summary["skipped"] == 0
    manifest = read_manifest(prep)
    assert (manifest["image_id"] == read_manifest(out)["image_id"]).all()
    for path in manifest["path"].iloc[::40]:
        image = cv2.imread(str(prep / path), cv2.IMREAD_UNCHANGED)
        assert image.shape == (331, 331, 3) and image.dtype.name == "uint8" and image.std() > 10
    assert len(list((prep / "figures").glob("*.png"))) == 2


def test_preprocess_real_sixteen_bit_dicom(shared_data):
    from cxrclf.data.imageio import read_image
    from cxrclf.preprocess import PreprocessParams, preprocess_image

    result = preprocess_image(read_image(shared_data / "extra-dicom" / "RG1_J2KI.dcm"), PreprocessParams())
    assert result.shape == (331, 331, 3) and 40 < result.mean() < 230
