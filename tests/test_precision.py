"""Reward fine-tuning over a 16-bit base: trained weights stay fp32, a non-finite step is the
trainer's to skip, bf16 is the default precision on CUDA."""

from __future__ import annotations

import json

import pytest
import torch

from drpose._cli import UsageError
from drpose.train.engine import TrainConfig, weight_dtype
from drpose.train.reward import RewardTuner, train_reward
from tests.test_reward_loop import tiny_setup


def test_lora_parameters_are_fp32_over_a_bf16_base_and_train(tmp_path):
    config, pipe, reward, data = tiny_setup(tmp_path)
    pipe.to(dtype=torch.bfloat16)
    tuner = RewardTuner(config, pipe, reward)
    names = {id(p): n for n, p in pipe.unet.named_parameters()}
    assert tuner.parameters and all(p.dtype == torch.float32 for p in tuner.parameters)
    assert all("lora" in names[id(p)] for p in tuner.parameters)
    frozen = [p for p in pipe.unet.parameters() if not p.requires_grad]
    assert frozen and all(p.dtype == torch.bfloat16 for p in frozen)
    images, joints = data.batch(torch.arange(1))
    out = tuner.loss(images, joints, torch.Generator().manual_seed(0))
    out.loss.backward()
    grads = [p.grad for p in tuner.parameters if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_full_finetuning_trains_fp32_and_keeps_a_bf16_reference(tmp_path):
    config, pipe, reward, _ = tiny_setup(tmp_path, finetune="full")
    pipe.to(dtype=torch.bfloat16)
    tuner = RewardTuner(config, pipe, reward)
    assert all(p.dtype == torch.float32 for p in tuner.parameters)
    assert all(p.dtype == torch.bfloat16 for p in tuner.frozen_unet.parameters())


def test_a_non_finite_unet_output_skips_the_step_instead_of_ending_the_run(tmp_path):
    config, pipe, reward, data = tiny_setup(tmp_path, steps=2)
    with torch.no_grad():
        pipe.unet.conv_out.bias[0] = float("nan")
    train_reward(config, pipe, reward, data, data)  # no FloatingPointError from the UNet
    lines = [json.loads(x) for x in (tmp_path / "reward" / "log.jsonl").read_text().splitlines()]
    skipped = [x for x in lines if x.get("event") == "skipped non-finite step"]
    assert len(skipped) == 2 and lines[-1]["skipped_steps"] == 2
    lora_b = [p for n, p in pipe.unet.named_parameters() if "lora_B" in n]
    assert lora_b and all(torch.all(p == 0) for p in lora_b)  # no update was applied


def test_bf16_is_the_default_precision_on_cuda_and_never_used_elsewhere():
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert TrainConfig().precision_on(cuda) == "bf16"
    assert TrainConfig(mixed_precision="fp16").precision_on(cuda) == "fp16"
    assert TrainConfig(mixed_precision="no").precision_on(cuda) == "no"
    assert TrainConfig(mixed_precision="bf16").precision_on(cpu) == "no"
    assert [weight_dtype(p) for p in ("no", "fp16", "bf16")] == [
        torch.float32, torch.float16, torch.bfloat16]
    with pytest.raises(UsageError, match=r"--train\.mixed_precision must be one of"):
        TrainConfig(mixed_precision="fp8")
