"""DrPose reward fine-tuning on tiny random-init components: what trains, through which steps,
with which reference; checkpointing; metrics and grids; exact resume."""

from __future__ import annotations

import json

import pytest
import torch

from drpose.data.stream import TensorPairs
from drpose.infer import load_lora
from drpose.models import SkeletonNet
from drpose.pipelines import MultiViewPipeline
from drpose.reward import PoseScore
from drpose.train.engine import TrainConfig
from drpose.train.reward import RewardConfig, RewardTuner, train_reward
from drpose.train.rollout import RolloutPlan, rollout


def tiny_setup(tmp_path, *, finetune="lora", steps=2, name="reward"):
    pipe = MultiViewPipeline.tiny(seed=0, face_view=False, face_fusion=False)
    torch.manual_seed(1)
    skel = SkeletonNet(in_channels=8, channels=(8, 16))
    reward = PoseScore(skel, sigma=1.5)
    config = RewardConfig(
        train=TrainConfig(name=name, runs_dir=str(tmp_path), steps=steps, lr=1e-2,
                          checkpoint_every=1, log_every=1, progress=False),
        num_steps=4, trained_steps=2, early_stop=1, finetune=finetune, lora_rank=2,
        image_every=1, eval_samples=1)
    gen = torch.Generator().manual_seed(0)
    images = torch.rand(3, 3, 32, 32, generator=gen)
    joints = torch.randn(3, 23, 3, generator=gen) * 0.3
    data = TensorPairs(images, joints)
    return config, pipe, reward, data


def test_lora_starts_at_the_base_model_and_only_adapters_train(tmp_path):
    config, pipe, reward, data = tiny_setup(tmp_path)
    tuner = RewardTuner(config, pipe, reward)
    assert tuner.parameters and all("lora" in n for n, p in pipe.unet.named_parameters()
                                    if p.requires_grad)
    gen = torch.Generator().manual_seed(0)
    cond = tuner.encode(data.images[:1], gen)
    latents = pipe.prepare_latents(cond, gen)
    t = pipe.scheduler.timesteps[0] if len(pipe.scheduler.timesteps) else torch.tensor(999)
    with torch.no_grad():
        trained = pipe.unet_step(latents, t, cond, 1.0)
        reference = tuner.reference_step()(latents, t, cond)
    torch.testing.assert_close(trained, reference)  # peft's B = 0: KL is 0 at the start
    out = tuner.loss(data.images[:1], data.joints[:1], torch.Generator().manual_seed(1))
    out.loss.backward()
    grads = [p.grad for p in tuner.parameters]
    assert any(g is not None and g.abs().sum() > 0 for g in grads)
    assert all(p.grad is None for p in pipe.unet.parameters() if not p.requires_grad)
    assert all(p.grad is None for p in reward.parameters())


def test_same_seed_same_adapters_other_seed_other_adapters(tmp_path):
    calls = iter(range(100, 200))

    def lora_a(seed):
        config, pipe, reward, _ = tiny_setup(tmp_path)
        config.train.seed = seed
        torch.manual_seed(next(calls))  # the global generator differs before each construction
        RewardTuner(config, pipe, reward)
        return {n: p.detach().clone() for n, p in pipe.unet.named_parameters() if "lora_A" in n}

    first, again, other = lora_a(3), lora_a(3), lora_a(4)
    assert first and first.keys() == again.keys() == other.keys()
    assert all(torch.equal(first[n], again[n]) for n in first)
    assert not any(torch.equal(first[n], other[n]) for n in first)


def test_only_planned_steps_run_the_unet_with_a_graph(tmp_path, monkeypatch):
    config, pipe, reward, data = tiny_setup(tmp_path)
    tuner = RewardTuner(config, pipe, reward)
    calls = []
    real = pipe.unet.forward

    def spy(*args, **kwargs):
        calls.append(torch.is_grad_enabled())
        return real(*args, **kwargs)

    monkeypatch.setattr(pipe.unet, "forward", spy)
    gen = torch.Generator().manual_seed(0)
    cond = tuner.encode(data.images[:1], gen)
    plan = RolloutPlan(stop=3, trained=(0, 2))
    result = rollout(pipe, cond, plan, num_steps=4, guidance_scale=1.0, eta=0.0, generator=gen,
                     reference_step=tuner.reference_step())
    # per step: the trained model, then (trained steps only) the reference without a graph
    assert calls == [True, False, False, True, False, False]
    assert result.x0.requires_grad and result.kl.requires_grad


def test_gradient_checkpointing_is_active_and_non_reentrant(tmp_path, monkeypatch):
    config, pipe, reward, data = tiny_setup(tmp_path)
    tuner = RewardTuner(config, pipe, reward)
    seen = []
    real = torch.utils.checkpoint.checkpoint

    def spy(*args, **kwargs):
        seen.append(kwargs.get("use_reentrant"))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.utils.checkpoint, "checkpoint", spy)
    pipe.unet.train()
    tuner.loss(data.images[:1], data.joints[:1], torch.Generator().manual_seed(2)).loss.backward()
    assert seen and all(flag is False for flag in seen)


def test_full_finetune_keeps_a_frozen_copy(tmp_path):
    config, pipe, reward, _ = tiny_setup(tmp_path, finetune="full")
    config.offload_reference = True
    tuner = RewardTuner(config, pipe, reward)
    assert tuner.frozen_unet is not None and tuner.frozen_unet is not pipe.unet
    assert not any(p.requires_grad for p in tuner.frozen_unet.parameters())
    assert all(p.requires_grad for p in pipe.unet.parameters())
    with tuner.reference_model():
        assert pipe.unet is tuner.frozen_unet
    assert pipe.unet is not tuner.frozen_unet


def test_train_reward_writes_metrics_grids_and_lora(tmp_path):
    config, pipe, reward, data = tiny_setup(tmp_path)
    metrics = train_reward(config, pipe, reward, data, data)
    run = tmp_path / "reward"
    saved = json.loads((run / "metrics.json").read_text())
    assert {"posescore_before", "posescore_after"} <= set(saved)
    assert saved["posescore_before"] == pytest.approx(metrics["posescore_before"])
    each = saved["posescore_before_each"], saved["posescore_after_each"]
    assert len(each[0]) == len(each[1]) == len(data)
    assert saved["posescore_after"] == pytest.approx(sum(each[1]) / len(data))
    assert saved["improved"] == sum(a > b for a, b in zip(each[1], each[0], strict=True))
    assert (run / "grid_before.png").is_file() and (run / "grid_after.png").is_file()
    assert any((run / "grids").glob("step_*.png"))
    assert (run / "lora" / "trainable.safetensors").is_file()
    lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
    assert {"reward", "kl", "step_time_s"} <= set(lines[-1])
    # the adapters load into a fresh pipeline through `python -m drpose.infer --lora`'s loader
    fresh = MultiViewPipeline.tiny(seed=0, face_view=False, face_fusion=False)
    load_lora(fresh, run / "lora")
    trained = dict(pipe.unet.named_parameters())
    for name, value in fresh.unet.named_parameters():
        torch.testing.assert_close(value, trained[name], msg=name)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path):
    config, pipe, reward, data = tiny_setup(tmp_path / "a", steps=3)
    train_reward(config, pipe, reward, data, data)
    straight = {n: p.detach().clone() for n, p in pipe.unet.named_parameters()
                if p.requires_grad}

    config, pipe, reward, data = tiny_setup(tmp_path / "b", steps=3)
    train_reward(config, pipe, reward, data, data, stop_after=1)
    config, pipe, reward, data = tiny_setup(tmp_path / "b", steps=3)  # a new process
    metrics = train_reward(config, pipe, reward, data, data, resume=True)
    resumed = {n: p.detach() for n, p in pipe.unet.named_parameters() if p.requires_grad}
    assert metrics["steps"] == 3
    for name, value in straight.items():
        assert torch.equal(value, resumed[name]), name


def test_train_reward_reports_a_judge_before_and_after(tmp_path):
    config, pipe, reward, data = tiny_setup(tmp_path, name="judged")
    seen = []

    def judge(index, x0):
        seen.append(index)
        assert x0.shape[0] == 2 * pipe.views
        return {"x0_mean": float(x0.mean())}

    metrics = train_reward(config, pipe, reward, data, data, judge=judge)
    saved = json.loads((tmp_path / "judged" / "metrics.json").read_text())
    assert seen == list(range(len(data))) * 2  # before, then after
    for when in ("before", "after"):
        assert len(saved[f"x0_mean_{when}_each"]) == len(data)
        assert saved[f"x0_mean_{when}"] == pytest.approx(metrics[f"x0_mean_{when}"])
    assert saved["x0_mean_before_each"] != saved["x0_mean_after_each"]
