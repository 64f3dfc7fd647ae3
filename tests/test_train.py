"""The trainer: frozen parts stay frozen, training reduces the loss, an interrupted run resumes exactly."""

import dataclasses
import json

import pytest
import torch

from videoxl.model import TINY, VideoXL2
from videoxl.train.data import SyntheticData
from videoxl.train.recipe import SYNTH, Recipe, Stage
from videoxl.train.trainer import Trainer, lr_at


@pytest.fixture(scope="module")
def tokenizer():
    from videoxl.train.__main__ import synth_tokenizer

    return synth_tokenizer()


def tiny_model(tokenizer):
    torch.manual_seed(0)
    config = dataclasses.replace(TINY, llm=dataclasses.replace(TINY.llm, vocab_size=640))  # the synth tokenizer's 533
    return VideoXL2(config, tokenizer)


def test_a_tokenizer_larger_than_the_vocabulary_is_refused(tokenizer):
    with pytest.raises(ValueError, match="vocab_size >= 533"):
        VideoXL2(TINY, tokenizer)


def recipe(steps=(3, 2)) -> Recipe:
    stages = (Stage("a", trainable=("projector", "llm"), steps=steps[0], lr=3e-3, batch=2, min_groups=2,
                    max_groups=3, families={"needle": 1, "detail": 1}),
              Stage("b", trainable=("vision", "dts", "projector", "llm"), steps=steps[1], lr=1e-3, batch=2,
                    min_groups=2, max_groups=4, windows=(0, 1), random_positions=0.5))
    return Recipe("test", "tiny", stages, seed=1)


def test_frozen_parts_stay_frozen(tokenizer, tmp_path):
    model = tiny_model(tokenizer)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    one_stage = Recipe("frozen", "tiny", recipe().stages[:1])
    Trainer(model, one_stage, SyntheticData(seed=1), tmp_path, progress=False).run()
    after = model.state_dict()
    changed = {k for k in before if not torch.equal(before[k], after[k])}
    assert any(k.startswith("visual.mm_projector.") for k in changed)
    assert any(k.startswith("llm.") for k in changed)
    assert not any(k.startswith(("visual.vision_tower.", "visual.sae.")) for k in changed)


def test_interrupted_run_resumes_to_the_same_weights(tokenizer, tmp_path):
    straight = tiny_model(tokenizer)
    Trainer(straight, recipe(), SyntheticData(seed=1), tmp_path / "straight", progress=False).run()

    class Stop(Exception):
        pass

    def stop_at_third_step(record):
        if record["stage"] == "a" and record["step"] == 3:
            raise Stop  # killed after the save at step 2 of stage a, mid-way through step 3's bookkeeping

    first = tiny_model(tokenizer)
    with pytest.raises(Stop):
        Trainer(first, recipe(), SyntheticData(seed=1), tmp_path / "resumed", save_every=2, progress=False,
                on_log=stop_at_third_step).run()
    state = json.loads((tmp_path / "resumed" / "state" / "trainer.json").read_text())
    assert (state["stage"], state["step"]) == (0, 2)
    resumed = tiny_model(tokenizer)  # a fresh process would start from random weights
    Trainer(resumed, recipe(), SyntheticData(seed=1), tmp_path / "resumed", progress=False).run()
    for (name, a), (_, b) in zip(straight.state_dict().items(), resumed.state_dict().items()):
        torch.testing.assert_close(a, b, atol=1e-6, rtol=1e-5, msg=name)
    for run in ("straight", "resumed"):  # the curve of a resumed run has each step once, its loss as if unbroken
        log = [json.loads(line) for line in (tmp_path / run / "log.jsonl").read_text().splitlines()]
        assert [(r["stage"], r["step"]) for r in log] == [("a", 1), ("a", 2), ("a", 3), ("b", 1), ("b", 2)]
        assert all(r["samples_per_s"] > 0 and r["tokens_per_s"] > 0 for r in log)
        if run == "straight":
            straight_loss = [r["loss"] for r in log]
    assert [r["loss"] for r in log] == pytest.approx(straight_loss, rel=1e-4)


def test_training_fits_a_fixed_batch(tokenizer, tmp_path):
    class OneSample(SyntheticData):
        def sample(self, stage, stage_index, index):
            return super().sample(stage, 0, index % 2)

    model = tiny_model(tokenizer)
    stage = Stage("fit", trainable=("vision", "dts", "projector", "llm"), steps=40, lr=3e-3, batch=2,
                  min_groups=2, max_groups=2)
    losses = []
    Trainer(model, Recipe("fit", "tiny", (stage,)), OneSample(seed=2), tmp_path, progress=False,
            on_log=lambda r: losses.append(r["loss"])).run()
    assert sum(losses[-5:]) / 5 < 0.25 * sum(losses[:5]) / 5


def test_learning_rate_schedule_and_recipes():
    stage = Stage("s", trainable=("llm",), steps=100, lr=1.0, warmup=0.1)
    assert lr_at(stage, 0) == pytest.approx(0.1) and lr_at(stage, 9) == pytest.approx(1.0)
    assert lr_at(stage, 99) == pytest.approx(0.1, abs=0.01)
    with pytest.raises(ValueError, match="unknown parts"):
        Stage("s", trainable=("eyes",), steps=1, lr=1.0)
    assert SYNTH.preset == "synth" and all(set(s.trainable) <= {"vision", "dts", "projector", "llm"}
                                           for s in SYNTH.stages)
