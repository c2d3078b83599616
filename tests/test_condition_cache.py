"""The condition-encoding cache of the reward stage (``--cache_conditions``): exactly the
uncached condition, built once and reused, and training on it equals training on the images."""

from __future__ import annotations

import json

import pytest
import torch

from drpose.data.stream import TensorPairs
from drpose.pipelines import ImageEncodings, MultiViewPipeline
from drpose.train.conditions import META_FILE, CachedPairs, ConditionCache
from drpose.train.reward import train_reward
from tests.test_reward_loop import tiny_setup


def uint8_pairs(count: int = 3, side: int = 32) -> TensorPairs:
    gen = torch.Generator().manual_seed(0)
    images = torch.randint(0, 256, (count, 3, side, side), generator=gen, dtype=torch.uint8)
    return TensorPairs(images, torch.randn(count, 23, 3, generator=gen) * 0.3)


@pytest.mark.parametrize("face_view", [False, True])
def test_a_condition_from_encodings_is_the_condition_from_the_images(face_view):
    pipe = MultiViewPipeline.tiny(seed=0, face_view=face_view, face_fusion=False)
    images, _ = uint8_pairs().batch(torch.arange(2))
    with torch.no_grad():
        encoded = pipe.encode_images(images)
        assert encoded.latents.shape[:2] == encoded.embeds.shape[:2] == (2, 1 + face_view)
        direct = pipe.encode_condition(images, generator=torch.Generator().manual_seed(5))
        cached = pipe.encode_condition(encoded, generator=torch.Generator().manual_seed(5))
    for name in ("image_latents", "class_labels", "prompt_embeds"):
        assert torch.equal(getattr(direct, name), getattr(cached, name)), name
    wrong = ImageEncodings(torch.cat([encoded.latents] * 2, 1), torch.cat([encoded.embeds] * 2, 1))
    with pytest.raises(ValueError, match="condition images per object"):
        pipe.encode_condition(wrong)


def test_cache_holds_each_samples_encodings_is_reused_and_rebuilt_for_other_weights(tmp_path):
    pipe = MultiViewPipeline.tiny(seed=0, face_view=True, face_fusion=False)
    pairs = uint8_pairs(count=5)
    cache = ConditionCache.build(pipe, pairs, tmp_path, batch_size=2, show_progress=False)
    assert len(cache) == 5
    with torch.no_grad():  # encoded in the cache's batches of 2: a GEMM's bits may depend on
        for batch in ([0, 1], [2, 3], [4]):  # its batch size (MKL on AMD EPYC: CLIP embeds do)
            expected = pipe.encode_images(pairs.batch(torch.tensor(batch))[0])
            for row, i in enumerate(batch):
                latents, embeds = cache.inputs(i)
                assert torch.equal(latents, expected.latents[row])
                assert torch.equal(embeds, expected.embeds[row])
    stamp = (tmp_path / META_FILE).stat().st_mtime_ns
    ConditionCache.build(pipe, pairs, tmp_path, show_progress=False)
    assert (tmp_path / META_FILE).stat().st_mtime_ns == stamp  # same key: read, not rebuilt
    with torch.no_grad():
        pipe.vae.encoder.conv_in.bias.add_(0.5)
    rebuilt = ConditionCache.build(pipe, pairs, tmp_path, show_progress=False)
    assert json.loads((tmp_path / META_FILE).read_text())["vae"] != "" and \
        (tmp_path / META_FILE).stat().st_mtime_ns != stamp
    with torch.no_grad():  # built in one batch of 5 (batch_size 8)
        assert torch.equal(rebuilt.inputs(0)[0],
                           pipe.encode_images(pairs.batch(torch.arange(5))[0]).latents[0])
    with pytest.raises(ValueError, match="holds 5 samples"):
        CachedPairs(uint8_pairs(count=3), rebuilt)


def test_training_on_the_cache_equals_training_on_the_images_and_reads_no_image(tmp_path):
    losses, reads = {}, {}
    def setup(cached):
        config, pipe, reward, data = tiny_setup(tmp_path / str(cached), steps=3)
        config.cache_conditions, config.image_every = cached, 0
        held = TensorPairs(data.images, data.joints)  # evaluation reads its own pairs
        return config, pipe, reward, data, held

    for cached in (False, True):
        config, pipe, reward, data, held = setup(cached)
        train_reward(config, pipe, reward, data, held, stop_after=1)
        config, pipe, reward, data, held = setup(cached)  # a new process
        reads[cached] = []
        real = data.image
        data.image = lambda i, real=real, seen=reads[cached]: seen.append(i) or real(i)
        train_reward(config, pipe, reward, data, held, resume=True)  # steps 2 and 3
        run = tmp_path / str(cached) / "reward"
        lines = [json.loads(x) for x in (run / "log.jsonl").read_text().splitlines()]
        losses[cached] = [x["loss"] for x in lines if "loss" in x]
        assert (run / "conditions" / META_FILE).is_file() == cached
    assert len(losses[True]) == 3
    # the cache encodes up to 8 images per VAE call, the uncached step one: batched convolutions
    # round differently on the CPU (equal to the bit when the cache is built one at a time)
    torch.testing.assert_close(losses[True], losses[False], rtol=1e-6, atol=0)
    assert len(reads[False]) == 2 and reads[True] == []  # batch 1 x 2 steps; the cache: none
