"""The reward step's memory: measured on a tiny pipeline, split, and extrapolated by area."""

import pytest
import torch

from drpose._memory import LiveTensorBytes, peak_memory_bytes
from drpose.models import SkeletonNet
from drpose.pipelines.multiview import MultiViewPipeline
from drpose.reward import PoseScore
from drpose.train import memory


def test_live_tensor_bytes_counts_what_is_alive_at_once():
    def two_then_one():
        a = torch.empty(1000, dtype=torch.float32)  # 4000 B
        b = torch.empty(500, dtype=torch.float64)   # 4000 B
        del a
        c = b * 2  # 4000 B, while b is alive
        return c

    assert peak_memory_bytes(two_then_one, "cpu") == 8000
    with LiveTensorBytes() as mode:
        kept = torch.ones(10)
        view = kept[:5]
        assert mode.current() == 40 and view.untyped_storage().nbytes() == 40



@pytest.fixture(scope="module")
def measured():
    torch.manual_seed(0)
    pipe = MultiViewPipeline.tiny()
    reward = PoseScore(SkeletonNet(in_channels=8, channels=(8, 16)))
    settings = {"ckpt": {}, "no ckpt": {"gradient_checkpointing": False},
                "cfg": {"guidance_scale": 3.0}, "full": {"finetune": "full"}}
    return memory.measure_settings(pipe, reward, (8, 16), settings, lora_rank=4,
                                   log=lambda _: None)


def test_split_of_a_lora_step(measured):
    small, large = measured["ckpt"]
    lora = small.trainable
    assert 0 < lora < small.weights / 10  # adapters are a small part of the weights
    assert small.gradients == lora  # one fp32 gradient per trainable parameter
    assert small.optimizer == 2 * lora  # AdamW's two moments
    assert 0 < small.activations < large.activations  # 4x the latent area


def test_checkpointing_and_cfg_change_the_activations(measured):
    ckpt, plain, cfg = (measured[k][1].activations for k in ("ckpt", "no ckpt", "cfg"))
    assert plain > ckpt  # checkpointing frees the UNet's intermediates between passes
    assert cfg > ckpt  # two branches through the trained steps
    full = measured["full"][0]
    assert full.trainable > full.weights / 3  # whole UNet trainable + a frozen copy in weights


def test_extrapolation_is_linear_in_latent_area():
    a = memory.StepMemory(16, 1, 1.0, True, 10, 1, 1, 2, activations=100, seconds=0)
    b = memory.StepMemory(32, 1, 1.0, True, 10, 1, 1, 2, activations=400, seconds=0)
    assert memory.extrapolate(a, b, 96) == pytest.approx(100 + (96**2 - 256) * 300 / 768)
    with pytest.raises(ValueError, match="different latent sides"):
        memory.extrapolate(a, a, 96)
    gib = 2**30
    big_a = memory.StepMemory(16, 1, 1.0, True, 4 * gib, gib // 100, gib // 100, gib // 50,
                              activations=gib, seconds=0)
    big_b = memory.StepMemory(32, 1, 1.0, True, 4 * gib, gib // 100, gib // 100, gib // 50,
                              activations=4 * gib, seconds=0)
    table = memory.memory_table({"ckpt": (big_a, big_b)}, 96)
    fp32, bf16 = table.splitlines()[2:4]
    assert "| ckpt | fp32 | 3.99 |" in fp32 and "| 36.00 |" in fp32  # 1 + 35 x 1 GiB
    assert "(48, 80, 141)" in fp32.split("|")[6]  # ~40.0 GiB = 43 GB at batch 1
    assert "| 18.00 |" in bf16
