"""The run's device: resolved once, every model moved there, mismatches named, noise drawn on
the generator's device; g_skel tied to its VAE, images to the pipeline's side."""

from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from drpose._cli import UsageError
from drpose._devices import randn, require_device, resolve_device, same_device
from drpose.data.stream import PosePairs, StepBatches
from drpose.models import SkeletonNet
from drpose.models.fingerprint import weights_fingerprint
from drpose.pipelines import MultiViewPipeline
from drpose.reward import PoseScore
from drpose.train import skel as skel_stage
from drpose.train.engine import TrainConfig, Trainer
from drpose.train.reward import RewardTuner, check_image_side, train_reward
from tests.test_reward_loop import tiny_setup

no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the no-GPU behaviour")


@no_gpu
def test_resolve_device_defaults_to_the_cpu_and_refuses_cuda_without_a_gpu():
    assert resolve_device(None) == torch.device("cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match=r"--train.device cuda: this machine has no CUDA"):
        resolve_device("cuda", "--train.device")
    with pytest.raises(UsageError, match=r"--device 'gpu0': not a device name"):
        resolve_device("gpu0")


def test_same_device_treats_a_bare_type_as_its_current_index():
    assert same_device(torch.device("cpu"), torch.device("cpu"))
    assert not same_device(torch.device("cpu"), torch.device("meta"))
    assert same_device(torch.device("cuda"), torch.device("cuda:0")) == (
        not torch.cuda.is_available() or torch.cuda.current_device() == 0)
    assert not same_device(torch.device("cuda:0"), torch.device("cuda:1"))


def test_require_device_names_each_misplaced_item_and_the_expected_device():
    module = nn.Linear(2, 2).to("meta")
    with pytest.raises(ValueError, match=r"g_skel on meta; joints on meta, but the pipeline's "
                                         r"UNet is on cpu"):
        require_device("cpu", "the pipeline's UNet", g_skel=module,
                       joints=torch.zeros(2, device="meta"), latents=torch.zeros(2), none=None)
    require_device("meta", g_skel=module)


def test_posescore_names_both_devices_when_latents_and_g_skel_differ():
    reward = PoseScore(SkeletonNet(in_channels=8, channels=(8, 16)).to("meta"))
    latents, joints = torch.zeros(1, 6, 8, 16, 16), torch.zeros(1, 23, 3)
    with pytest.raises(ValueError, match=r"latents on cpu, but g_skel is on meta"):
        reward(latents, joints)
    with pytest.raises(ValueError, match=r"joints on meta, but latents is on cpu"):
        PoseScore(SkeletonNet(in_channels=8, channels=(8, 16)))(latents, joints.to("meta"))


def test_randn_draws_on_the_generator_device_and_lands_on_the_run_device():
    expected = torch.randn(3, 4, generator=torch.Generator().manual_seed(5))
    drawn = randn((3, 4), torch.Generator().manual_seed(5), "cpu", torch.float64)
    assert drawn.dtype == torch.float64
    torch.testing.assert_close(drawn, expected.double())
    moved = randn((3, 4), torch.Generator().manual_seed(5), "meta")  # CPU numbers, moved
    assert moved.device.type == "meta" and moved.shape == (3, 4)


def test_pipeline_to_moves_every_component_and_the_prompt_embeddings():
    pipe = MultiViewPipeline.tiny(seed=0, face_view=False, face_fusion=False).to("meta")
    require_device("meta", unet=pipe.unet, vae=pipe.vae, image_encoder=pipe.image_encoder,
                   image_normalizer=pipe.image_normalizer, prompt_embeds=pipe.prompt_embeds)


def test_trainer_refuses_a_model_that_is_not_on_the_run_device(tmp_path):
    config = TrainConfig(runs_dir=str(tmp_path), device="cpu", progress=False)
    with pytest.raises(ValueError, match=r"model on meta, but the run is on cpu"):
        Trainer(config, nn.Linear(2, 2).to("meta"))


def test_reward_tuner_refuses_a_g_skel_on_another_device(tmp_path):
    config, pipe, reward, _ = tiny_setup(tmp_path)
    reward.to("meta")
    with pytest.raises(ValueError, match=r"g_skel on meta, but the pipeline's UNet is on cpu"):
        RewardTuner(config, pipe, reward)


def test_reward_stage_moves_every_model_and_batch_to_the_run_device(tmp_path, monkeypatch):
    """With ``--train.device cpu``: each model gets ``.to(cpu)``, every batch is asked for on
    the CPU, and metrics.json records where each module ran."""
    config, pipe, reward, data = tiny_setup(tmp_path, steps=1)
    config.train.device = "cpu"
    moved: dict[str, torch.device] = {}
    original_to = nn.Module.to

    def spy_to(self, *args, **kwargs):
        target = kwargs.get("device", args[0] if args else None)
        if isinstance(target, (str, torch.device)):
            moved[type(self).__name__] = torch.device(target)
        return original_to(self, *args, **kwargs)

    batches: dict[str, list[torch.device]] = {"eval": [], "train": []}
    original_batch, original_get = PosePairs.batch, StepBatches.get

    def spy_batch(self, indices, device="cpu"):
        out = original_batch(self, indices, device)
        batches["eval"].extend(t.device for t in out)
        return out

    def spy_get(self, index, picks):
        out = original_get(self, index, picks)
        batches["train"].extend(t.device for t in out)
        return out

    monkeypatch.setattr(nn.Module, "to", spy_to)
    monkeypatch.setattr(PosePairs, "batch", spy_batch)
    monkeypatch.setattr(StepBatches, "get", spy_get)
    train_reward(config, pipe, reward, data, data)
    for name in ("MultiViewUNet", "AutoencoderKL", "CLIPVisionModelWithProjection",
                 "StableUnCLIPImageNormalizer", "PoseScore"):
        assert moved.get(name) == torch.device("cpu"), name
    for kind, devices in batches.items():  # training batches come through the loader
        assert devices and all(d == torch.device("cpu") for d in devices), kind
    saved = json.loads((tmp_path / "reward" / "metrics.json").read_text())
    assert saved["devices"] == {"unet": "cpu", "vae": "cpu", "image_encoder": "cpu",
                                "g_skel": "cpu"}


def test_weights_fingerprint_follows_the_weights_not_their_dtype_or_copy():
    torch.manual_seed(0)
    net = SkeletonNet(in_channels=8, channels=(8, 16))
    same = SkeletonNet(in_channels=8, channels=(8, 16))
    same.load_state_dict(net.state_dict())
    assert weights_fingerprint(net) == weights_fingerprint(same)
    assert weights_fingerprint(net) == weights_fingerprint(same.double())  # exact in float64
    with torch.no_grad():
        next(same.parameters()).view(-1)[0] += 1e-3
    assert weights_fingerprint(net) != weights_fingerprint(same)
    assert weights_fingerprint(net) != weights_fingerprint(
        SkeletonNet(in_channels=8, channels=(8, 16), map_scale=1))  # config only


def _skel_folder(tmp_path, vae: nn.Module | None):
    folder = tmp_path / "skel"
    folder.mkdir()
    settings = {"sigma": 1.5, "views": [0, 1, 2, 3, 4, 5]}
    if vae is not None:
        settings |= {"vae_fingerprint": weights_fingerprint(vae), "vae": "somewhere/vae"}
    (folder / skel_stage.POSESCORE_FILE).write_text(json.dumps(settings))
    return folder


def test_reward_refuses_a_g_skel_trained_on_another_vae(tmp_path):
    pipe = MultiViewPipeline.tiny(seed=0, face_view=False, face_fusion=False)
    other = MultiViewPipeline.tiny(seed=1, face_view=False, face_fusion=False)
    folder = _skel_folder(tmp_path, other.vae)
    with pytest.raises(UsageError, match=r"--skel .*skel: this g_skel learned from the latents "
                                         r"of another VAE \(somewhere/vae.* than pipeline P's"):
        skel_stage.check_vae(folder, pipe.vae, "P")
    skel_stage.check_vae(folder, other.vae, "P")  # its own VAE passes


def test_a_g_skel_without_a_recorded_vae_gets_a_warning(tmp_path):
    pipe = MultiViewPipeline.tiny(seed=0, face_view=False, face_fusion=False)
    with pytest.warns(UserWarning, match=r"records no VAE: cannot check"):
        skel_stage.check_vae(_skel_folder(tmp_path, None), pipe.vae, "P")


def test_images_of_another_side_than_the_pipeline_are_refused():
    pipe = MultiViewPipeline.tiny(seed=0, face_view=False, face_fusion=False)
    assert pipe.image_side == 32
    check_image_side(32, pipe, "P", "--data D")
    with pytest.raises(UsageError, match=r"--data D: 64 px images, but pipeline P "
                                         r"generates 32 px.*--resolution 32"):
        check_image_side(64, pipe, "P", "--data D")


@no_gpu
def test_infer_and_eval_run_take_a_device():
    from drpose.eval.__main__ import parse_args
    from drpose.infer import load_pipeline
    from drpose.infer import parse_args as infer_args

    assert load_pipeline("tiny", None, device="cpu").device == torch.device("cpu")
    with pytest.raises(UsageError, match=r"--device cuda: this machine has no CUDA"):
        load_pipeline("tiny", None, device="cuda")
    assert infer_args(["photo.png", "--out", "o", "--device", "cuda:1"]).device == "cuda:1"
    assert parse_args(["run", "--bench", "b", "--model", "tiny", "--device", "cpu"]).device == (
        "cpu")
