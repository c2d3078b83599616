"""The shared training machinery: exact resume, atomic checkpoints, the NaN guard, the plan."""

from __future__ import annotations

import json
import warnings

import pytest
import torch
from torch import nn

from drpose._cli import UsageError
from drpose.train import engine
from drpose.train.engine import StepOutput, TrainConfig, Trainer, step_generator
from drpose.train.rollout import plan_rollout


def toy_run(tmp_path, steps, *, stop_after=None, resume=False, nan_at=None, **options):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.Tanh(), nn.Linear(8, 1))
    config = TrainConfig(**{"name": "toy", "runs_dir": str(tmp_path), "steps": steps, "lr": 1e-2,
                            "checkpoint_every": 2, "log_every": 1, "progress": False,
                            "grad_accum": 2, **options})
    trainer = Trainer(config, model)
    assert trainer.begin(resume) == resume

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


def checkpoints(tmp_path):
    root = tmp_path / "toy" / engine.CHECKPOINTS
    return sorted(p.name for p in root.iterdir() if p.is_dir()), (root / engine.LATEST).read_text()


def test_pruning_orders_by_step_number_and_keeps_latest(tmp_path):
    # a folder named with fewer digits sorts after step_0000005 by name, not by step number
    toy_run(tmp_path, 4, checkpoint_every=1, keep_checkpoints=2)
    root = tmp_path / "toy" / engine.CHECKPOINTS
    (root / "step_0000004").rename(root / "step_4")
    (root / engine.LATEST).write_text("step_4")
    toy_run(tmp_path, 6, checkpoint_every=1, keep_checkpoints=2, resume=True)
    names, latest = checkpoints(tmp_path)
    assert names == ["step_0000005", "step_0000006"] and latest == "step_0000006"


@pytest.mark.parametrize("field", ["keep_checkpoints", "checkpoint_every", "log_every",
                                   "grad_accum", "steps"])
@pytest.mark.parametrize("value", [0, -3])
def test_counts_below_one_are_refused(tmp_path, field, value):
    with pytest.raises(UsageError, match=rf"--train\.{field} must be an integer >= 1"):
        TrainConfig(**{field: value})


def test_fresh_run_over_a_run_is_refused_and_resume_needs_a_checkpoint(tmp_path):
    with pytest.raises(UsageError, match="no checkpoint to continue"):
        toy_run(tmp_path, 2, resume=True)
    assert not engine.has_checkpoint(tmp_path / "toy")
    toy_run(tmp_path, 2)
    assert engine.has_checkpoint(tmp_path / "toy")
    before = (tmp_path / "toy/log.jsonl").read_text()
    with pytest.raises(UsageError, match=r"already holds a run.*--resume.*--train.name.*delete"):
        toy_run(tmp_path, 2)
    assert (tmp_path / "toy/log.jsonl").read_text() == before
    assert checkpoints(tmp_path) == (["step_0000002"], "step_0000002")


def test_a_second_run_on_the_same_folder_is_refused(tmp_path):
    model = nn.Linear(2, 1)
    config = TrainConfig(name="toy", runs_dir=str(tmp_path), progress=False)
    first = Trainer(config, model)
    first.begin(False)
    with pytest.raises(UsageError, match=rf"{tmp_path / 'toy'} is in use by another run"):
        Trainer(config, model).begin(False)
    first.close()
    second = Trainer(config, model)
    assert second.begin(False) is False  # released by close
    second.close()


def damage_truncate(folder, name):
    path = folder / name
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def damage_empty(folder, name):
    (folder / name).write_text("")


@pytest.mark.parametrize(("name", "damage"), [("trainable.safetensors", damage_truncate),
                                              ("optimizer.pt", damage_truncate),
                                              ("state.json", damage_empty)])
def test_damaged_latest_falls_back_to_the_previous(tmp_path, name, damage):
    toy_run(tmp_path, 4)  # checkpoints at steps 2 and 4
    root = tmp_path / "toy" / engine.CHECKPOINTS
    damage(root / "step_0000004", name)
    with pytest.warns(UserWarning, match=rf"step_0000004/{name}"):
        _, trainer = toy_run(tmp_path, 4, resume=True, stop_after=0)
    assert trainer.step == 2 and (root / engine.LATEST).read_text() == "step_0000002"
    # the damaged one is set aside: the run goes on from step 2 and pruning keeps good ones
    toy_run(tmp_path, 6, resume=True)
    names, latest = checkpoints(tmp_path)
    assert names == ["step_0000004", "step_0000004.damaged", "step_0000006"]
    assert latest == "step_0000006" and (root / "step_0000004.damaged").is_dir()


def test_latest_naming_a_missing_folder_falls_back(tmp_path):
    toy_run(tmp_path, 4)
    root = tmp_path / "toy" / engine.CHECKPOINTS
    (root / engine.LATEST).write_text("step_0000009")
    with pytest.warns(UserWarning, match="names step_0000009, which does not exist"):
        _, trainer = toy_run(tmp_path, 4, resume=True)
    assert trainer.step == 4


def test_no_usable_checkpoint_names_the_files(tmp_path):
    toy_run(tmp_path, 4, keep_checkpoints=1)
    root = tmp_path / "toy" / engine.CHECKPOINTS
    damage_truncate(root / "step_0000004", "trainable.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with pytest.raises(UsageError, match=r"no usable checkpoint.*step_0000004/trainable"):
            toy_run(tmp_path, 6, resume=True)


def test_fp16_overflow_step_is_skipped_updates_the_scaler_and_the_next_step_trains(
        tmp_path, monkeypatch):
    """fp16's grad scaler (emulated on the CPU: a ``torch.amp.GradScaler("cpu")`` in accelerate's
    fp16 path): an overflowing step is skipped, the scale backs off, and the next step's
    unscale works and updates the weights (without the update it raises, ending the run)."""
    from accelerate import Accelerator

    monkeypatch.setattr(Accelerator, "mixed_precision", property(lambda self: "fp16"))
    accelerator = Accelerator(cpu=True)
    accelerator.native_amp = True
    accelerator.scaler = torch.amp.GradScaler("cpu", init_scale=2.0 ** 10)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    config = TrainConfig(name="fp16", runs_dir=str(tmp_path), steps=3, lr=1e-2, log_every=1,
                         checkpoint_every=10, progress=False)
    trainer = Trainer(config, model, accelerator=accelerator)
    trainer.begin(False)
    weights = []

    def step(index):
        weights.append(model.weight.detach().clone())
        loss = model(torch.ones(2, 4)).pow(2).mean()
        return StepOutput(loss * 1e38 if index == 0 else loss, {})  # x 1024: overflow

    trainer.fit(step)
    trainer.close()
    lines = [json.loads(x) for x in (tmp_path / "fp16/log.jsonl").read_text().splitlines()]
    assert [x.get("event") for x in lines] == ["skipped non-finite step", None, None]
    assert torch.equal(weights[0], weights[1])  # the overflow did not update
    assert not torch.equal(weights[1], weights[2])  # the next step trained
    assert accelerator.scaler.get_scale() == 2.0 ** 9  # backed off once, then no growth yet
