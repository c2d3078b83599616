"""The shared training machinery: exact resume, atomic checkpoints, the NaN guard, the plan."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from drpose.train import engine
from drpose.train.engine import StepOutput, TrainConfig, Trainer, step_generator
from drpose.train.rollout import plan_rollout


def toy_run(tmp_path, steps, *, stop_after=None, resume=False, nan_at=None):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    config = TrainConfig(name="toy", runs_dir=str(tmp_path), steps=steps, lr=1e-2,
                         checkpoint_every=2, log_every=1, progress=False, grad_accum=2)
    trainer = Trainer(config, model)
    if resume:
        assert trainer.resume()

    def step(index):
        gen = step_generator(config.seed, index)
        x = torch.randn(16, 4, generator=gen)
        noise = torch.randn((), generator=torch.Generator().manual_seed(index))
        loss = ((model(x) - x.sum(1, keepdim=True)) ** 2).mean() + 0 * noise
        if index // config.grad_accum == nan_at:
            loss = loss * float("nan")
        return StepOutput(loss, {"x": float(torch.rand(()))})  # global RNG use is restored too

    trainer.fit(step, stop_after=stop_after)
    trainer.close()
    return model, trainer


def test_interrupted_and_resumed_run_equals_uninterrupted(tmp_path):
    straight, _ = toy_run(tmp_path / "a", 6)
    toy_run(tmp_path / "b", 6, stop_after=3)  # "killed" after step 3 (last checkpoint: step 3)
    resumed, trainer = toy_run(tmp_path / "b", 6, resume=True)
    assert trainer.step == 6
    for p, q in zip(straight.parameters(), resumed.parameters(), strict=True):
        assert torch.equal(p, q)
    lines = [json.loads(x) for x in (tmp_path / "b/toy/log.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines] == [1, 2, 3, 4, 5, 6]


def test_checkpoint_interrupted_while_writing_keeps_previous(tmp_path, monkeypatch):
    _, trainer = toy_run(tmp_path, 2)
    root = tmp_path / "toy" / engine.CHECKPOINTS
    assert (root / engine.LATEST).read_text() == "step_0000002"
    calls = {"n": 0}
    real = engine.save_safetensors

    def dying_save(tensors, path):
        calls["n"] += 1
        if calls["n"] == 2:  # after the weights, while writing the RNG state
            raise KeyboardInterrupt
        real(tensors, path)

    monkeypatch.setattr(engine, "save_safetensors", dying_save)
    trainer.step = 4
    with pytest.raises(KeyboardInterrupt):
        trainer.save_checkpoint()
    assert (root / engine.LATEST).read_text() == "step_0000002"
    assert not (root / "step_0000004").exists()
    monkeypatch.setattr(engine, "save_safetensors", real)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    fresh = Trainer(trainer.config, model)
    assert fresh.resume() and fresh.step == 2


def test_non_finite_step_is_skipped_and_logged(tmp_path):
    torch.manual_seed(0)
    model, _ = toy_run(tmp_path, 3, nan_at=1)
    lines = [json.loads(x) for x in (tmp_path / "toy/log.jsonl").read_text().splitlines()]
    skipped = [x for x in lines if x.get("event") == "skipped non-finite step"]
    assert len(skipped) == 1 and skipped[0]["step"] == 2
    assert all(torch.isfinite(p).all() for p in model.parameters())
    assert lines[-1]["skipped_steps"] == 1


def test_nothing_to_train_is_an_error(tmp_path):
    model = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ValueError, match="nothing to train"):
        Trainer(TrainConfig(runs_dir=str(tmp_path)), model)


@pytest.mark.parametrize("seed", range(20))
def test_rollout_plan(seed):
    gen = torch.Generator().manual_seed(seed)
    plan = plan_rollout(20, 2, 8, gen)
    assert 11 <= plan.stop <= 19
    assert len(plan.trained) == 2 and len(set(plan.trained)) == 2
    assert all(0 <= i <= plan.stop for i in plan.trained)
    gap = plan.trained[1] - plan.trained[0]
    assert abs(gap - (plan.stop + 1) / 2) <= 1  # evenly spaced


def test_rollout_plan_rejects_impossible():
    with pytest.raises(ValueError, match="trained_steps"):
        plan_rollout(5, 3, 4, torch.Generator())
