import os
from pathlib import Path
import pytest
from tests.reliability.harness import Case, Env, Prepared, run_case
from tests.reliability.test_bad_inputs import TINY_TRAIN

def p_prep_inside(env):
    fused = env.copy(env.fused, "fused")
    return Prepared(["preprocess", fused, "--out", fused / "images", "--overwrite", "--workers", "1"], inputs=[fused], names=[fused / "images"])
def p_fuse_inside(env):
    src = env.copy(env.source("nlm"), "src/nlm")
    return Prepared(["fuse", "--nlm", src, "--out", src / "fused", "--workers", "1"], inputs=[src], names=[src / "fused"])
def p_fuse_symlink(env):
    src = env.copy(env.source("nlm"), "src/nlm")
    link = env.tmp / "alias"; link.symlink_to(src)
    return Prepared(["fuse", "--nlm", src, "--out", link, "--overwrite", "--workers", "1"], inputs=[src, link], names=[link])
def p_predict_csv_is_image(env):
    img = env.xray("x.png")
    return Prepared(["predict", img, "--model", env.run, "--csv", img, "--workers", "1"], inputs=[img], names=[img])
def p_eval_out_is_run(env):
    run = env.copy(env.run, "run")
    return Prepared(["evaluate", run, "--out", run, "--overwrite", "--bootstrap", "0", "--workers", "1"], inputs=[run], names=[run])
def p_train_out_in_data(env):
    prep = env.copy(env.prep, "prep")
    return Prepared(["train", *TINY_TRAIN, "--data", prep, "--out", prep / "run"], inputs=[prep], names=[prep / "run"])
def p_train_overwrite_foreign(env):
    out = env.write("mine/notes.txt", "x").parent
    return Prepared(["train", *TINY_TRAIN, "--data", env.prep, "--out", out, "--overwrite"], inputs=[out, env.prep], names=[out])
def p_explain_default_out_exists(env):
    img = env.xray("x.png")
    env.write("explanations/x.gradcam.png", "mine")
    return Prepared(["explain", img, "--model", env.run, "--method", "gradcam"], inputs=[img, env.tmp / "explanations"], names=[Path("explanations/x.gradcam.png")])
def p_preprocess_preview_onto_image(env):
    img = env.xray("x.png")
    return Prepared(["preprocess", img, "--out", img], inputs=[img], names=[img])
def p_config_not_json(env):
    run = env.copy(env.run, "run"); (run / "config.json").write_text("{not json")
    img = env.xray("x.png")
    return Prepared(["predict", img, "--model", run, "--workers", "1"], inputs=[run, img], names=[run / "config.json"])
def p_weights_missing(env):
    run = env.copy(env.run, "run"); (run / "model.safetensors").unlink()
    img = env.xray("x.png")
    return Prepared(["predict", img, "--model", run, "--workers", "1"], inputs=[run, img], names=[run])
def p_classnames_3_wrong(env):
    import json
    run = env.copy(env.run, "run"); d = json.loads((run/"config.json").read_text()); d["model"]["class_names"] = ["normal", "covid19", "other_pneumonia", "tuberculosis"]; (run/"config.json").write_text(json.dumps(d))
    img = env.xray("x.png")
    return Prepared(["predict", img, "--model", run, "--workers", "1"], inputs=[run, img], names=[run / "model.safetensors"])
def p_in_chans_changed(env):
    import json
    run = env.copy(env.run, "run"); d = json.loads((run/"config.json").read_text()); d["model"]["in_chans"] = 1; d["model"]["mean"]=[0.5]; d["model"]["std"]=[0.5]; (run/"config.json").write_text(json.dumps(d))
    img = env.xray("x.png")
    return Prepared(["predict", img, "--model", run, "--workers", "1"], inputs=[run, img], names=[run / "model.safetensors"])
def p_image_size_huge_train(env):
    return Prepared(["train", "--model", "resnet-baseline", "--image-size", "100000", "--batch-size", "16", "--epochs", "1", "--strategy", "weighted", "--classes", "2", "--workers", "1", "--data", env.prep, "--out", env.tmp/"r"], inputs=[env.prep], names=[])
def p_manifest_path_escapes(env):
    import csv
    prep = env.copy(env.prep, "prep")
    from tests.reliability.test_bad_inputs import _edit_manifest
    def ch(rows):
        rows[0]["path"] = "../../../../etc/passwd"; return rows
    m = _edit_manifest(prep, ch)
    return Prepared(["train", *TINY_TRAIN, "--data", prep, "--out", env.tmp/"r"], inputs=[prep], names=[m])

CASES = [Case(n, f, message=()) for n, f in [
 ("prep-inside", p_prep_inside), ("fuse-inside", p_fuse_inside), ("fuse-symlink", p_fuse_symlink), ("csv-is-image", p_predict_csv_is_image),
 ("eval-out-is-run", p_eval_out_is_run), ("train-out-in-data", p_train_out_in_data), ("train-overwrite-foreign", p_train_overwrite_foreign),
 ("explain-default-exists", p_explain_default_out_exists), ("preview-onto-image", p_preprocess_preview_onto_image), ("config-not-json", p_config_not_json),
 ("weights-missing", p_weights_missing), ("classnames", p_classnames_3_wrong), ("in-chans", p_in_chans_changed), ("train-huge-size", p_image_size_huge_train),
 ("manifest-path-escapes", p_manifest_path_escapes)]]

@pytest.mark.parametrize("case", CASES, ids=str)
def test_probe(case, catalogue_env, run_cli):
    r = run_case(case, catalogue_env, run_cli)
    print("\nSTDERR:", r.stderr[-300:])
