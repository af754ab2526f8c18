"""Every command fed the bad inputs of real defect reports (see ``harness`` for what each case checks)."""

from __future__ import annotations

import csv
import json
import os
from pathlib import Path

import pytest

from tests.reliability.harness import Case, Env, Prepared, run_case

TINY_TRAIN = ["--model", "resnet-baseline", "--image-size", "48", "--batch-size", "16", "--epochs", "1", "--strategy", "weighted",
              "--classes", "2", "--workers", "1"]
# the arguments conftest's trained_run was made with, so that --resume reaches its checkpoint
TRAINED_RUN_ARGS = ["--model", "resnet-baseline", "--strategy", "oversample", "--classes", "3", "--epochs", "6", "--patience", "6",
                    "--batch-size", "16", "--lr", "2e-3", "--image-size", "48", "--workers", "1"]


# ----------------------------------------------------------------------------- helpers

def _edit_config(run: Path, change) -> Path:
    path = run / "config.json"
    document = json.loads(path.read_text())
    change(document)
    path.write_text(json.dumps(document, indent=2))
    return path


def _model_field(key: str, value):
    """Set a model field of config.json, nested (``model.<key>``) or flat (the 0.1 format)."""
    def change(document: dict) -> None:
        target = document["model"] if isinstance(document.get("model"), dict) else document
        target[key] = value
    return change


def _top_field(key: str, value):
    def change(document: dict) -> None:
        document[key] = value
    return change


def _edit_manifest(folder: Path, change) -> Path:
    path = folder / "manifest.csv"
    with open(path, newline="") as handle:
        reader = csv.DictReader(handle)
        header, rows = reader.fieldnames, list(reader)
    rows = change(rows)
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, header, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return path


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="") as handle:
        return list(csv.DictReader(handle))


# ----------------------------------------------------------------------------- 1. fuse onto its source

def fuse_out_is_source(env: Env) -> Prepared:
    source = env.copy(env.source("nlm"), "src/nlm")
    return Prepared(["fuse", "--nlm", source, "--out", source, "--overwrite", "--workers", "1"], inputs=[source], names=[source])


def fuse_out_is_parent_of_source(env: Env) -> Prepared:
    source = env.copy(env.source("nlm"), "src/nlm")
    return Prepared(["fuse", "--nlm", source, "--out", source.parent, "--overwrite", "--workers", "1"], inputs=[source.parent], names=[source.parent])


# ----------------------------------------------------------------------------- 2. preprocess onto its input

def preprocess_out_is_fused(env: Env) -> Prepared:
    fused = env.copy(env.fused, "fused")
    return Prepared(["preprocess", fused, "--out", fused, "--overwrite", "--workers", "1"], inputs=[fused], names=[fused])


# ----------------------------------------------------------------------------- 3. explain onto its image

def explain_out_is_image(env: Env, *extra: str) -> Prepared:
    image = env.xray("xray.png")
    return Prepared(["explain", image, "--model", env.run, "--method", "gradcam", "--out", image, *extra], inputs=[image, env.run], names=[image])


# ----------------------------------------------------------------------------- 4. a manifest id that escapes

def preprocess_escaping_image_id(env: Env) -> Prepared:
    fused = env.copy(env.fused, "data/fused")

    def escape(rows):
        rows[0]["image_id"] = "../../../x"
        return rows

    manifest = _edit_manifest(fused, escape)
    out = env.tmp / "data" / "prep"
    return Prepared(["preprocess", fused, "--out", out, "--workers", "1", "--size", "32"], inputs=[fused], allowed=[out], names=[manifest])


# ----------------------------------------------------------------------------- 5. a user's own "latest"

def _train_beside_users_latest(env: Env, make_latest) -> Prepared:
    latest = env.tmp / "proj" / "latest"
    make_latest(latest)
    run = env.tmp / "proj" / "run1"

    def check(result) -> None:
        config = json.loads((run / "config.json").read_text())
        assert config["status"] == "finished"
        assert (run / "model.safetensors").is_file()

    return Prepared(["train", *TINY_TRAIN, "--data", env.prep, "--out", run], inputs=[latest, env.prep], allowed=[run], check=check)


def train_latest_is_users_file(env: Env) -> Prepared:
    return _train_beside_users_latest(env, lambda latest: env.write(_rel(env, latest), "my notes about the latest run\n"))


def train_latest_is_users_folder(env: Env) -> Prepared:
    return _train_beside_users_latest(env, lambda latest: env.write(_rel(env, latest / "keep.txt"), "mine\n"))


def _rel(env: Env, path: Path) -> str:
    return path.relative_to(env.tmp).as_posix()


# ----------------------------------------------------------------------------- 6. --out under a regular file

def _under_file(env: Env) -> tuple[Path, Path]:
    blocker = env.write("afile", "a user's file\n")
    return blocker, blocker / "out"


def fuse_out_under_file(env: Env) -> Prepared:
    blocker, out = _under_file(env)
    return Prepared(["fuse", "--nlm", env.source("nlm"), "--out", out, "--workers", "1"], inputs=[blocker, env.source("nlm")], names=[blocker])


def preprocess_out_under_file(env: Env) -> Prepared:
    blocker, out = _under_file(env)
    return Prepared(["preprocess", env.fused, "--out", out, "--workers", "1"], inputs=[blocker, env.fused], names=[blocker])


def train_out_under_file(env: Env) -> Prepared:
    blocker, out = _under_file(env)
    return Prepared(["train", *TINY_TRAIN, "--data", env.prep, "--out", out], inputs=[blocker, env.prep], names=[blocker])


def evaluate_out_under_file(env: Env) -> Prepared:
    blocker, out = _under_file(env)
    return Prepared(["evaluate", env.run, "--out", out, "--bootstrap", "0", "--workers", "1"], inputs=[blocker, env.run], names=[blocker])


# ----------------------------------------------------------------------------- 7. predict --csv onto a folder

def predict_csv_is_folder(env: Env) -> Prepared:
    image = env.xray("xray.png")
    folder = env.write("results/keep.txt", "mine\n").parent
    return Prepared(["predict", image, "--model", env.run, "--csv", folder, "--workers", "1"], inputs=[image, folder, env.run], names=[folder])


# ----------------------------------------------------------------------------- 8. hand-edited config.json

def _edited_run(env: Env, change) -> Path:
    run = env.copy(env.run, "run")
    _edit_config(run, change)
    return run


def predict_with_config(change):
    def setup(env: Env) -> Prepared:
        run = _edited_run(env, change)
        image = env.xray("xray.png")
        return Prepared(["predict", image, "--model", run, "--workers", "1"], inputs=[run, image], names=[run / "config.json", run])
    return setup


def evaluate_with_config(change):
    def setup(env: Env) -> Prepared:
        run = _edited_run(env, change)
        return Prepared(["evaluate", run, "--bootstrap", "0", "--workers", "1"], inputs=[run, env.prep], names=[run / "config.json", run])
    return setup


def predict_unfinished_allowed(env: Env) -> Prepared:
    run = _edited_run(env, _top_field("status", "training"))
    image = env.xray("xray.png")

    def check(result) -> None:
        (entry,) = json.loads(result.stdout)
        assert entry["file"] == str(image) and entry["predicted"] in ("normal", "covid19", "other")
        assert sum(entry["probabilities"].values()) == pytest.approx(1.0, abs=1e-5)

    return Prepared(["predict", image, "--model", run, "--allow-unfinished", "--json", "--workers", "1"], inputs=[run, image], check=check)


def evaluate_unfinished_allowed(env: Env) -> Prepared:
    run = _edited_run(env, _top_field("status", "training"))
    out = env.tmp / "evaluation"

    def check(result) -> None:
        metrics = json.loads((out / "metrics.json").read_text())
        test_rows = [r for r in _read_csv(env.prep / "manifest.csv") if r["split"] == "test"]
        assert metrics["n_images"] == len(test_rows) > 0
        assert len(_read_csv(out / "predictions.csv")) == len(test_rows)

    return Prepared(["evaluate", run, "--allow-unfinished", "--out", out, "--bootstrap", "0", "--workers", "1", "--json"],
                    inputs=[run, env.prep], allowed=[out], check=check)


# ----------------------------------------------------------------------------- 9. truncated weights

def _truncated_run(env: Env) -> Path:
    run = env.copy(env.run, "run")
    weights = run / "model.safetensors"
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    return run


def predict_truncated_weights(env: Env) -> Prepared:
    run = _truncated_run(env)
    image = env.xray("xray.png")
    return Prepared(["predict", image, "--model", run, "--workers", "1"], inputs=[run, image], names=[run / "model.safetensors"])


def evaluate_truncated_weights(env: Env) -> Prepared:
    run = _truncated_run(env)
    return Prepared(["evaluate", run, "--bootstrap", "0", "--workers", "1"], inputs=[run, env.prep], names=[run / "model.safetensors"])


# ----------------------------------------------------------------------------- 10. resume from a corrupt checkpoint

def resume_corrupt_checkpoint(env: Env) -> Prepared:
    run = env.copy(env.run, "run")
    checkpoint = run / "checkpoint.pt"
    checkpoint.write_bytes(b"PK\x03\x04 not a checkpoint " + bytes(range(256)) * 8)
    return Prepared(["train", *TRAINED_RUN_ARGS, "--data", env.prep, "--out", run, "--resume"], inputs=[run, env.prep], names=[checkpoint])


# ----------------------------------------------------------------------------- 11. classes without training images

def oversample_missing_classes(env: Env) -> Prepared:
    prep = env.copy(env.prep, "prep")
    gone = {"tuberculosis", "other_pneumonia"}
    manifest = _edit_manifest(prep, lambda rows: [r for r in rows if not (r["split"] == "train" and r["finding"] in gone)])
    assert {r["finding"] for r in _read_csv(manifest) if r["split"] == "train"} == {"normal", "covid19"}
    out = env.tmp / "proj" / "run"
    return Prepared(["train", "--model", "resnet-baseline", "--strategy", "oversample", "--classes", "4", "--data", prep, "--out", out,
                     "--image-size", "48", "--batch-size", "16", "--epochs", "1", "--workers", "1"],
                    inputs=[prep], names=[prep, manifest])


# ----------------------------------------------------------------------------- 12. a decompression bomb among good images

def predict_folder_with_bomb(env: Env) -> Prepared:
    folder = env.tmp / "incoming"
    good = [env.xray("incoming/a.png", 0), env.xray("incoming/b.png", 1)]
    bomb = env.write("incoming/bomb.png", env.fixture("bomb_png_bytes"))
    table = env.tmp / "results.csv"

    def check(result) -> None:
        rows = {Path(r["file"]).name: r for r in _read_csv(table)}
        assert sorted(rows) == ["a.png", "b.png", "bomb.png"]
        assert "900,000,000 pixels" in rows["bomb.png"]["error"] and rows["bomb.png"]["predicted"] == ""
        for name in ("a.png", "b.png"):
            row = rows[name]
            assert row["error"] == "" and row["predicted"] in ("normal", "covid19", "other")
            assert sum(float(row[f"prob_{c}"]) for c in ("normal", "covid19", "other")) == pytest.approx(1.0, abs=1e-5)

    return Prepared(["predict", folder, "--model", env.run, "--csv", table, "--workers", "1"], inputs=[folder, *good, bomb, env.run],
                    allowed=[table], check=check)


def fuse_table_with_bomb(env: Env) -> Prepared:
    rows = env.fixture("fused_rows")
    picked = [r for finding in ("normal", "covid19", "other_pneumonia", "tuberculosis") for r in [x for x in rows if x["finding"] == finding][:3]]
    folder = env.tmp / "mine"
    lines = ["path,finding,patient_id"]
    for index, row in enumerate(picked):
        env.copy(env.fused / row["path"], f"mine/images/{index}.png")
        lines.append(f"images/{index}.png,{row['finding']},p{index}")
    env.write("mine/images/bomb.png", env.fixture("bomb_png_bytes"))
    lines.append("images/bomb.png,normal,pbomb")
    table = env.write("mine/table.csv", "\n".join(lines) + "\n")
    out = env.tmp / "fused"

    def check(result) -> None:
        report = json.loads((out / "fuse_report.json").read_text())
        assert report["images"] == len(picked) == len(_read_csv(out / "manifest.csv"))
        (excluded,) = report["excluded_rows"]
        assert excluded["source_file"] == "images/bomb.png" and excluded["reason"] == "unreadable image"
        assert "900,000,000 pixels" in excluded["detail"]

    return Prepared(["fuse", "--table", table, "--out", out, "--workers", "1", "--json"], inputs=[folder], allowed=[out], check=check)


# ----------------------------------------------------------------------------- 13. two writers

def train_while_locked_here(env: Env) -> Prepared:
    from cxrclf.io import folder_lock  # cxrclf's own lock, held by this very process

    out = env.tmp / "proj" / "run1"
    env.stack.enter_context(folder_lock(out))
    return Prepared(["train", *TINY_TRAIN, "--data", env.prep, "--out", out], inputs=[env.prep], names=[out],
                    check=lambda result: _names_pid(result, os.getpid()))


def fuse_while_locked_elsewhere(env: Env) -> Prepared:
    out = env.tmp / "fused"
    pid = env.hold_lock_in_subprocess(out)
    return Prepared(["fuse", "--nlm", env.source("nlm"), "--out", out, "--workers", "1"], inputs=[env.source("nlm")], names=[out],
                    check=lambda result: _names_pid(result, pid))


def _names_pid(result, pid: int) -> None:
    assert f"in use by process {pid} " in result.stderr


# ----------------------------------------------------------------------------- 14. pydicom's test files

def predict_pydicom_test_files(env: Env) -> Prepared:
    import pydicom.data

    from cxrclf.data.imageio import IMAGE_SUFFIXES

    folder = Path(pydicom.data.__file__).parent / "test_files"
    expected = sorted(str(p) for p in folder.rglob("*") if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)

    def check(result) -> None:
        entries = json.loads(result.stdout)
        assert [e["file"] for e in entries] == expected
        errors = [e for e in entries if "error" in e]
        classified = [e for e in entries if "predicted" in e]
        assert len(errors) + len(classified) == len(expected) >= 70
        assert all(isinstance(e["error"], str) and e["error"] and "\n" not in e["error"] for e in errors)
        assert all(e["predicted"] in ("normal", "covid19", "other") for e in classified)
        assert len(classified) >= 40 and errors  # most are images; some hold none or are broken on purpose
        assert result.exit_code == (1 if errors else 0)

    return Prepared(["predict", folder, "--model", env.run, "--json", "--workers", "1"], inputs=[folder, env.run], check=check)


# ----------------------------------------------------------------------------- the catalogue


# ----------------------------------------------------------------------------- round two: outputs onto a run or an input

def predict_csv_onto_run_file(name: str):
    def setup(env: Env) -> Prepared:
        run = env.copy(env.run, "run")
        image = env.xray("xray.png")
        return Prepared(["predict", image, "--model", run, "--csv", run / name, "--overwrite", "--workers", "1"], inputs=[run, image], names=[run / name])
    return setup


def segment_out_is_input_folder(nested: str):
    def setup(env: Env) -> Prepared:
        images = env.xray("imgs/a.png").parent
        env.xray("imgs/b.png", 1)
        segmenter = env.write("seg/keep.txt", "a segmenter folder\n").parent
        out = images / nested if nested else images
        return Prepared(["segment", images, "--model", segmenter, "--out", out], inputs=[images, segmenter], names=[out])
    return setup


def segment_out_is_cwd(env: Env) -> Prepared:
    image = env.xray("a.png")
    segmenter = env.write("seg/keep.txt", "a segmenter folder\n").parent
    return Prepared(["segment", image, "--model", segmenter, "--out", "."], inputs=[image, segmenter], names=[Path(".")])


# ----------------------------------------------------------------------------- round two: a guard that is not the run's

def _refit_guard(run: Path, dim: int, classes: int) -> None:
    import numpy as np

    from cxrclf.guard.detector import GaussianDetector

    rng = np.random.default_rng(0)
    labels = np.arange(40) % classes
    detector = GaussianDetector().fit(rng.normal(size=(40, dim)), labels)
    detector.calibrate(detector.score(rng.normal(size=(20, dim))))
    detector.save(run / "guard.safetensors")

    def change(document: dict) -> None:
        document["guard"]["threshold"] = float(detector.threshold)
    _edit_config(run, change)


def predict_with_foreign_guard(dim: int | None, classes: int):
    def setup(env: Env) -> Prepared:
        run = env.copy(env.run, "run")
        own = json.loads((run / "config.json").read_text())["guard"]["feature_dim"]
        _refit_guard(run, dim or own, classes)
        image = env.xray("xray.png")
        return Prepared(["predict", image, "--model", run, "--workers", "1"], inputs=[run, image], names=[run / "guard.safetensors"])
    return setup


def _guard_field(key: str, value):
    def change(document: dict) -> None:
        document["guard"][key] = value
    return change


def _without(key: str):
    def change(document: dict) -> None:
        document.pop(key)
    return change


# ----------------------------------------------------------------------------- round two: fold ensembles

def _cv_parent(env: Env, folds: int, listed: int) -> Path:
    parent = env.tmp / "cv"
    for fold in range(folds):
        env.copy(env.run, f"cv/fold-{fold}")
    (parent / "cv_summary.json").write_text(json.dumps({"folds": listed}))
    return parent


def predict_cv_missing_fold(env: Env) -> Prepared:
    parent = _cv_parent(env, 2, 3)
    image = env.xray("xray.png")
    return Prepared(["predict", image, "--model", parent, "--workers", "1"], inputs=[parent, image], names=[parent / "fold-2"])


def predict_cv_fold_of_other_architecture(env: Env) -> Prepared:
    parent = _cv_parent(env, 2, 2)
    _edit_config(parent / "fold-1", _model_field("name", "resnet18"))
    image = env.xray("xray.png")
    return Prepared(["predict", image, "--model", parent, "--workers", "1"], inputs=[parent, image], names=[parent / "fold-1"])


# ----------------------------------------------------------------------------- round two: environment, resumption, sources

def with_environment(variable: str, value: str, command: str):
    def setup(env: Env) -> Prepared:
        os.environ[variable] = value
        env.stack.callback(os.environ.pop, variable, None)
        if command == "fuse":
            source = env.copy(env.source("nlm"), "src/nlm")
            return Prepared(["fuse", "--nlm", source, "--out", env.tmp / "fused", "--workers", "1"], inputs=[source])
        if command == "preprocess":
            fused = env.copy(env.fused, "fused")
            return Prepared(["preprocess", fused, "--out", env.tmp / "prep", "--workers", "1"], inputs=[fused])
        image = env.xray("xray.png")
        return Prepared(["predict", image, "--model", env.run, "--workers", "1"], inputs=[image, env.run])
    return setup


def preprocess_repairs_damaged_outputs(env: Env) -> Prepared:
    from cxrclf.prepare import preprocess_folder
    from cxrclf.preprocess.params import PreprocessParams

    fused = env.copy(env.fused, "fused")
    prep = env.tmp / "prep"
    preprocess_folder(fused, prep, PreprocessParams(size=64), workers=1)
    pngs = sorted((prep / "images").glob("*.png"))
    intact = {p.name: p.read_bytes() for p in pngs}
    for damaged in pngs[:2]:
        damaged.write_bytes(damaged.read_bytes()[:100])  # truncated
    pngs[2].write_bytes(b"")                              # emptied
    import cv2
    import numpy as np

    flipped = cv2.imdecode(np.frombuffer(intact[pngs[3].name], np.uint8), cv2.IMREAD_UNCHANGED)[::-1]  # decodes, but not what was written
    pngs[3].write_bytes(cv2.imencode(".png", np.ascontiguousarray(flipped))[1].tobytes())

    def check(result) -> None:
        assert "4 of them damaged outputs redone" in result.stdout, result.stdout
        assert all(p.read_bytes() == intact[p.name] for p in pngs)  # byte-identical to the first run's
        summary = json.loads((prep / "preprocess.json").read_text())
        assert summary["repaired"] == 4 and summary["reused"] == len(pngs) - 4

    return Prepared(["preprocess", fused, "--out", prep, "--size", "64", "--workers", "1"], inputs=[fused], allowed=[prep], check=check)


def fuse_table_with_escaping_paths(env: Env) -> Prepared:
    rows = env.fixture("fused_rows")
    lines = ["path,finding,patient_id"]
    for index, row in enumerate(rows[:4]):
        env.copy(env.fused / row["path"], f"mine/images/{index}.png")
        lines.append(f"images/{index}.png,{row['finding']},p{index}")
    outside = env.xray("outside.png")
    lines += [f"{outside},normal,pabs", "../outside.png,normal,pup", "/etc/passwd,normal,ppasswd"]
    table = env.write("mine/table.csv", "\n".join(lines) + "\n")
    out = env.tmp / "fused"

    def check(result) -> None:
        report = json.loads((out / "fuse_report.json").read_text())
        unsafe = [e["source_file"] for e in report["excluded_rows"] if e["reason"] == "unsafe path"]
        assert sorted(unsafe) == sorted([str(outside), "../outside.png", "/etc/passwd"]) and report["images"] == 4
        with open(out / "manifest.csv", newline="") as handle:
            assert len(list(csv.DictReader(handle))) == 4

    return Prepared(["fuse", "--table", table, "--out", out, "--workers", "1"], inputs=[table.parent, outside], allowed=[out], check=check)


def fuse_nlm_with_link_outside(env: Env) -> Prepared:
    source = env.copy(env.source("nlm"), "src/nlm")
    kept = sorted(source.rglob("MCUCXR_*.png"))
    elsewhere = env.copy(kept[0], "elsewhere/MCUCXR_9999_0.png")
    (kept[0].parent / "MCUCXR_9999_0.png").symlink_to(elsewhere)
    out = env.tmp / "fused"

    def check(result) -> None:
        report = json.loads((out / "fuse_report.json").read_text())
        unsafe = [e["source_file"] for e in report["excluded_rows"] if e["reason"] == "unsafe path"]
        assert [Path(e).name for e in unsafe] == ["MCUCXR_9999_0.png"] and report["excluded"]["total"] == 1, report["excluded_rows"]

    return Prepared(["fuse", "--nlm", source, "--out", out, "--workers", "1"], inputs=[source, elsewhere], allowed=[out], check=check)


def fuse_negative_near_duplicate_bits(env: Env) -> Prepared:
    source = env.copy(env.source("nlm"), "src/nlm")
    return Prepared(["fuse", "--nlm", source, "--out", env.tmp / "fused", "--near-duplicate-bits", "-5", "--workers", "1"], inputs=[source])


def train_on_lung_folder_with_changed_segmenter(env: Env) -> Prepared:
    prep = env.copy(env.prep, "prep")
    segmenter = env.write("lung/keep.txt", "not the segmenter it was cropped with\n").parent
    document = json.loads((prep / "preprocess.json").read_text())
    document["params"].update(lung="crop", lung_model=str(segmenter.resolve()), lung_model_sha256="0" * 64)
    (prep / "preprocess.json").write_text(json.dumps(document))
    return Prepared(["train", "--data", prep, "--out", env.tmp / "run", *TINY_TRAIN], inputs=[prep, segmenter], names=[segmenter, segmenter.resolve()])


CASES = [
    Case("fuse-out-is-source", fuse_out_is_source, message=("output is the input",)),
    Case("fuse-out-is-parent-of-source", fuse_out_is_parent_of_source, message=("output contains the input",)),
    Case("preprocess-out-is-fused", preprocess_out_is_fused, message=("output is the input",)),
    Case("explain-out-is-image", explain_out_is_image, message=("output is the input",)),
    Case("explain-out-is-image-overwrite", lambda env: explain_out_is_image(env, "--overwrite"), message=("output is the input",)),
    Case("preprocess-manifest-image-id-escapes", preprocess_escaping_image_id, message=("image_id '../../../x'",)),
    Case("train-latest-is-users-file", train_latest_is_users_file, exit_code=0),
    Case("train-latest-is-users-folder", train_latest_is_users_folder, exit_code=0),
    Case("fuse-out-under-file", fuse_out_under_file, message=("under a file",)),
    Case("preprocess-out-under-file", preprocess_out_under_file, message=("under a file",)),
    Case("train-out-under-file", train_out_under_file, message=("under a file",)),
    Case("evaluate-out-under-file", evaluate_out_under_file, message=("under a file",)),
    Case("predict-csv-is-folder", predict_csv_is_folder, message=("is a folder",)),
    Case("predict-config-input-size-huge", predict_with_config(_model_field("input_size", 100000)), message=("input_size", "100000")),
    Case("evaluate-config-input-size-huge", evaluate_with_config(_model_field("input_size", 100000)), message=("input_size", "100000")),
    Case("predict-config-mean-string", predict_with_config(_model_field("mean", "0.5")), message=("mean",)),
    Case("evaluate-config-mean-string", evaluate_with_config(_model_field("mean", "0.5")), message=("mean",)),
    Case("predict-config-preprocess-empty", predict_with_config(_top_field("preprocess", {})), message=("preprocess",)),
    Case("evaluate-config-preprocess-empty", evaluate_with_config(_top_field("preprocess", {})), message=("preprocess",)),
    Case("predict-config-unfinished", predict_with_config(_top_field("status", "training")), message=("--allow-unfinished",)),
    Case("evaluate-config-unfinished", evaluate_with_config(_top_field("status", "training")), message=("--allow-unfinished",)),
    Case("predict-config-unfinished-allowed", predict_unfinished_allowed, exit_code=0),
    Case("evaluate-config-unfinished-allowed", evaluate_unfinished_allowed, exit_code=0),
    Case("predict-weights-truncated", predict_truncated_weights, message=("damaged",), absent=("do not fit",)),
    Case("evaluate-weights-truncated", evaluate_truncated_weights, message=("damaged",), absent=("do not fit",)),
    Case("train-resume-corrupt-checkpoint", resume_corrupt_checkpoint, message=("checkpoint.pt is damaged",)),
    Case("train-oversample-classes-without-images", oversample_missing_classes, message=("other_pneumonia", "tuberculosis", "no training images")),
    Case("predict-folder-with-bomb", predict_folder_with_bomb, exit_code=1, message=("900,000,000 pixels",)),
    Case("fuse-table-with-bomb", fuse_table_with_bomb, exit_code=0),
    Case("train-while-locked-in-this-process", train_while_locked_here, message=("in use by process",)),
    Case("fuse-while-locked-by-another-process", fuse_while_locked_elsewhere, message=("in use by process",)),
    Case("predict-pydicom-test-files", predict_pydicom_test_files, exit_code=(0, 1)),
    # round two
    Case("predict-csv-onto-run-config", predict_csv_onto_run_file("config.json"), message=("lies inside the input",)),
    Case("predict-csv-onto-run-weights", predict_csv_onto_run_file("model.safetensors"), message=("lies inside the input",)),
    Case("segment-out-is-input-folder", segment_out_is_input_folder(""), message=("output is the input",)),
    Case("segment-out-inside-input-folder", segment_out_is_input_folder("seg"), message=("lies inside the input",)),
    Case("segment-out-is-cwd-over-inputs", segment_out_is_cwd, message=("contains the input",)),
    Case("predict-guard-other-feature-size", predict_with_foreign_guard(100, 3), message=("fitted on 100 features",), absent=("ValueError",)),
    Case("predict-guard-more-classes", predict_with_foreign_guard(None, 5), message=("fitted on classes [0, 1, 2, 3, 4]",)),
    Case("predict-guard-fewer-classes", predict_with_foreign_guard(None, 2), message=("fitted on classes [0, 1], the run has 3",)),
    Case("predict-config-guard-feature-dim", predict_with_config(_guard_field("feature_dim", 100)), message=("guard.feature_dim says 100 features",)),
    Case("predict-config-guard-threshold-nan", predict_with_config(_guard_field("threshold", float("nan"))), message=("guard.threshold",)),
    Case("predict-config-guard-threshold-negative", predict_with_config(_guard_field("threshold", -5)), message=("guard.threshold",)),
    Case("predict-config-guard-threshold-text", predict_with_config(_guard_field("threshold", "high")), message=("guard.threshold", "'high'")),
    Case("predict-config-guard-file-elsewhere", predict_with_config(_guard_field("file", "/etc/passwd")), message=("guard.file",)),
    Case("predict-config-guard-kind-unknown", predict_with_config(_guard_field("kind", "magic")), message=("guard.kind", "'magic'")),
    Case("predict-config-guard-rule-unknown", predict_with_config(_guard_field("rule", "median")), message=("guard.rule", "one of conformal, quantile", "'median'")),
    Case("predict-config-without-status", predict_with_config(_without("status")), message=("field status is missing",)),
    Case("predict-config-without-format-version", predict_with_config(_without("format_version")), message=("field format_version is missing",)),
    Case("predict-cv-missing-fold", predict_cv_missing_fold, message=("fold-2 is missing", "3 folds")),
    Case("predict-cv-fold-of-other-architecture", predict_cv_fold_of_other_architecture, message=("differs from fold-0 in architecture",)),
    Case("fuse-max-pixels-not-a-number", with_environment("CXRCLF_MAX_PIXELS", "abc", "fuse"), message=("CXRCLF_MAX_PIXELS='abc'",)),
    Case("predict-max-pixels-float", with_environment("CXRCLF_MAX_PIXELS", "1e12", "predict"), message=("CXRCLF_MAX_PIXELS='1e12'",)),
    Case("preprocess-max-pixels-negative", with_environment("CXRCLF_MAX_PIXELS", "-1", "preprocess"), message=("CXRCLF_MAX_PIXELS='-1'",)),
    Case("predict-model-variable-names-nothing", with_environment("CXRCLF_MODEL", "nowhere", "predict-default"), message=("CXRCLF_MODEL='nowhere'",)),
    Case("predict-lung-network-variable-unknown", with_environment("CXRCLF_LUNG_NETWORK", "tensorrt", "predict"), message=("CXRCLF_LUNG_NETWORK is 'tensorrt'", "onnxruntime or torch")),
    Case("preprocess-repairs-damaged-outputs", preprocess_repairs_damaged_outputs, exit_code=0),
    Case("fuse-table-escaping-paths", fuse_table_with_escaping_paths, exit_code=0),
    Case("fuse-nlm-link-outside", fuse_nlm_with_link_outside, exit_code=0),
    Case("fuse-near-duplicate-bits-negative", fuse_negative_near_duplicate_bits, message=("from 0 to 256", "-5")),
    Case("train-lung-folder-segmenter-changed", train_on_lung_folder_with_changed_segmenter, message=("segment",)),
]


def test_case_names_are_unique():
    assert len({c.name for c in CASES}) == len(CASES)


# Cases of the commands that use a run (a session's trained run, or a training of their own) are slow.
USES_A_RUN = ("train", "predict", "evaluate", "explain", "segment")


@pytest.mark.parametrize("case", [pytest.param(c, marks=pytest.mark.slow) if c.name.startswith(USES_A_RUN) else c for c in CASES], ids=str)
def test_bad_input(case: Case, catalogue_env: Env, run_cli):
    run_case(case, catalogue_env, run_cli)
