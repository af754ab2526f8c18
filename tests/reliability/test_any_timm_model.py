"""Issue 22, "Any timm model does not train": the CLI trains a model whose head widens after pooling,
and a run folder left by a first step that failed does not block the same command afterwards.

MobileNetV3's ``conv_head`` turns 288 pooled channels into 1024 (``mobilenetv3_small_050``), so
a head sized from timm's ``num_features`` failed in the first step ("mat1 and mat2 shapes cannot
be multiplied (10x1024 and 288x128)") and left a run folder with no checkpoint behind; rerunning
then said "pass --resume", and --resume said "nothing to resume". See ``harness`` for what
every case checks besides its own ``check``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.reliability.harness import Case, Env, Prepared, run_case

pytestmark = pytest.mark.slow  # every case trains a timm model

MOBILENET_TRAIN = ["--model", "mobilenetv3_small_050", "--no-pretrained", "--image-size", "64", "--epochs", "1", "--strategy", "oversample",
                   "--classes", "3", "--batch-size", "32", "--workers", "1"]
SHAPE_ERROR = "mat1 and mat2 shapes cannot be multiplied (10x1024 and 288x128)"


def _finished_mobilenet(run: Path):
    def check(result) -> None:
        config = json.loads((run / "config.json").read_text())
        assert config["status"] == "finished" and config["outcome"]["epochs_run"] == 1
        assert (config["model"]["name"], config["model"]["requested_name"]) == ("mobilenetv3_small_050", None)  # spelled as it is
        assert config["guard"]["feature_dim"] == 1024  # the guard reads the head's input: conv_head's 1024, not the 288 pooled channels
        assert (run / "model.safetensors").is_file() and (run / "checkpoint.pt").is_file()
        assert "model mobilenetv3_small_050: " in result.stdout + result.stderr
    return check


def train_mobilenetv3(env: Env) -> Prepared:
    run = env.tmp / "runs" / "mobilenet"
    return Prepared(["train", *MOBILENET_TRAIN, "--data", env.prep, "--out", run], inputs=[env.prep], allowed=[run.parent],
                    check=_finished_mobilenet(run))


def _failed_first_step(env: Env) -> Path:
    """The folder a first step that raised leaves behind: marker, config (status training), log; no checkpoint, no weights."""
    from cxrclf.train.loop import Trainer, TrainOptions, train

    run = env.tmp / "runs" / "mobilenet"

    def fail(*args, **kwargs):
        raise RuntimeError(SHAPE_ERROR)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Trainer, "fit_epoch", fail)
        with pytest.raises(RuntimeError, match="mat1 and mat2"):
            train(TrainOptions(model="mobilenetv3_small_050", pretrained=False, image_size=64, epochs=1, strategy="oversample", classes=3,
                               batch_size=32, threads=1, data=env.prep, out=run))
    assert json.loads((run / "config.json").read_text())["status"] == "training"
    assert not (run / "checkpoint.pt").exists() and not (run / "model.safetensors").exists()
    return run


def train_again_after_a_failed_first_step(env: Env) -> Prepared:
    run = _failed_first_step(env)
    finished = _finished_mobilenet(run)

    def check(result) -> None:
        finished(result)
        assert (run / "train.log").read_text().count("started mobilenetv3_small_050 RM3") == 2  # the failed attempt's line stays

    return Prepared(["train", *MOBILENET_TRAIN, "--data", env.prep, "--out", run], inputs=[env.prep], allowed=[run.parent], check=check)


def resume_after_a_failed_first_step(env: Env) -> Prepared:
    run = _failed_first_step(env)
    return Prepared(["train", *MOBILENET_TRAIN, "--data", env.prep, "--out", run, "--resume"], inputs=[env.prep, run], names=[run])


def train_over_a_run_without_its_checkpoint(env: Env) -> Prepared:
    """A finished run whose checkpoint.pt was deleted (to save space) still has weights: never started afresh over it."""
    from tests.reliability.test_bad_inputs import TRAINED_RUN_ARGS

    run = env.copy(env.run, "runs/baseline")
    (run / "checkpoint.pt").unlink()
    return Prepared(["train", *TRAINED_RUN_ARGS, "--data", env.prep, "--out", run], inputs=[env.prep, run], names=[run])


CASES = [
    Case("train-mobilenetv3-head-after-pooling", train_mobilenetv3, exit_code=0, absent=("mat1 and mat2",)),
    Case("train-again-after-a-failed-first-step", train_again_after_a_failed_first_step, exit_code=0, absent=("--resume",)),
    Case("train-resume-after-a-failed-first-step", resume_after_a_failed_first_step,
         message=("nothing to resume", "the same command without --resume starts it afresh")),
    Case("train-over-a-run-without-its-checkpoint", train_over_a_run_without_its_checkpoint, message=("run folder exists", "--overwrite")),
]


@pytest.mark.parametrize("case", CASES, ids=str)
def test_any_timm_model(case: Case, catalogue_env: Env, run_cli):
    run_case(case, catalogue_env, run_cli)
