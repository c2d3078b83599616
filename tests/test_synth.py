"""Image synthesis backends: the render backend's images against its palette and camera, the
OpenPose drawing, and the diffusers backend with tiny random-init ControlNet components."""

import json
import warnings

import numpy as np
import pytest
import torch

from drpose.body import StandInModelWarning
from drpose.data.__main__ import main
from drpose.data.dataset import DrPoseDataset, read_format, validate
from drpose.data.synth import (
    PART_NAMES,
    DiffusersSynthesizer,
    Palette,
    RenderSynthesizer,
    make_synthesizer,
)
from drpose.motion.load import default_pose_sequences
from drpose.render.cameras import INFERENCE_CROP_FRACTION
from drpose.render.draw import KEYPOINT_COLOURS, LIMB_INTENSITY, skeleton_images

SIDE = 64
TINY_SIDE = 32  # the tiny ControlNet pipeline's images (latents 16 x 16)


@pytest.fixture(scope="module")
def poses():
    clip = default_pose_sequences()[1]
    return clip.take(np.array([0, 120, 200]))  # rest-like, bent over, stepping


@pytest.fixture(scope="module")
def render():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StandInModelWarning)
        return RenderSynthesizer(SIDE)


@pytest.fixture(scope="module")
def frames(render, poses):
    return render(poses, seed=7)


def test_render_shapes_range_and_white_background(frames):
    assert frames.images.shape == (3, 3, SIDE, SIDE) and frames.masks.shape == (3, 1, SIDE, SIDE)
    assert frames.images.dtype == torch.float32
    assert frames.images.min() >= 0 and frames.images.max() <= 1
    background = frames.masks[:, 0] == 0
    assert torch.all(frames.images.permute(0, 2, 3, 1)[background] == 1)
    assert set(frames.masks.unique().tolist()) == {0.0, 1.0}


def test_body_fills_the_inference_crop(frames):
    """PSHuman's inference normalisation: the silhouette's longer side is 740/768 of the image."""
    for mask in frames.masks[:, 0]:
        rows = torch.nonzero(mask.any(dim=1)).flatten()
        cols = torch.nonzero(mask.any(dim=0)).flatten()
        extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1).item()
        assert abs(extent - INFERENCE_CROP_FRACTION * SIDE) <= 2
        assert 0.03 < mask.mean() < 0.6


def test_body_pixels_are_shaded_palette_colours(render, frames):
    """Every body pixel is albedo * shade with albedo one of the 5 palette colours and shade in
    [ambient, 1]; skin, top, bottom and shoes all show."""
    palette = frames.palette[0]  # (5, 3)
    pixels = frames.images.permute(0, 2, 3, 1)[frames.masks[:, 0] > 0]  # (P, 3)
    shade = (pixels @ palette.T) / (palette * palette).sum(1)  # (P, 5) least-squares scale
    residual = (pixels[:, None] - shade[..., None] * palette[None]).abs().amax(-1)
    fits = (residual < 1e-5) & (shade > render.ambient - 1e-5) & (shade < 1 + 1e-5)
    assert fits.any(dim=1).all()
    used = {PART_NAMES[k] for k in fits.float().argmax(dim=1).unique().tolist()}
    assert {"skin", "top", "bottom", "shoes"} <= used
    assert torch.equal(frames.palette, palette.expand(3, -1, -1))


def test_keypoints_land_on_the_body(frames):
    """The projection (cameras) and the rasterized silhouette agree: COCO keypoints (joints inside
    the body, face points on its surface) fall on or next to body pixels."""
    body = frames.body
    assert body.visible.all()
    for mask, points in zip(frames.masks[:, 0], body.keypoints, strict=True):
        grown = torch.nn.functional.max_pool2d(mask[None, None], 3, stride=1, padding=1)[0, 0]
        cols, rows = points.round().long().unbind(-1)
        assert grown[rows, cols].all()


def test_render_is_deterministic_per_seed(render, poses, frames):
    again = render(poses, seed=7)
    assert torch.equal(again.images, frames.images)
    other = render(poses, seed=8)
    assert torch.equal(other.masks, frames.masks) and not torch.equal(other.images, frames.images)


def test_batching_does_not_change_frames(render, poses, frames):
    """Same frames up to float32 rounding (smplx's matmuls sum in another order per batch)."""
    render.poser.batch_size = 2  # 3 frames: batches of 2 and 1
    try:
        again = render(poses, seed=7)
        assert torch.equal(again.masks, frames.masks)
        torch.testing.assert_close(again.images, frames.images, atol=1e-4, rtol=0)
    finally:
        render.poser.batch_size = 8


def test_palette_is_seeded_and_in_range():
    a, b = Palette.random(3), Palette.random(3)
    assert np.array_equal(a.colours, b.colours) and a.long_sleeves == b.long_sleeves
    colours = np.stack([Palette.random(s).colours for s in range(50)])
    assert colours.shape == (50, 5, 3) and colours.min() >= 0 and colours.max() <= 1
    assert len({c.tobytes() for c in colours}) == 50


def test_skeleton_drawing_follows_openpose_colours():
    keypoints = torch.zeros(1, 17, 2)
    keypoints[0, 5] = torch.tensor([40.0, 20.0])  # left shoulder
    keypoints[0, 6] = torch.tensor([20.0, 20.0])  # right shoulder; the neck is their midpoint
    visible = torch.zeros(1, 17, dtype=torch.bool)
    visible[0, 5:7] = True
    image = skeleton_images(keypoints, visible, 64)[0]
    assert image.shape == (3, 64, 64)
    neck_to_right = torch.tensor(KEYPOINT_COLOURS[0], dtype=torch.float32) * LIMB_INTENSITY / 255
    neck_to_left = torch.tensor(KEYPOINT_COLOURS[1], dtype=torch.float32) * LIMB_INTENSITY / 255
    assert torch.allclose(image[:, 20, 25], neck_to_right.round(decimals=2), atol=0.01)
    assert torch.allclose(image[:, 20, 35], neck_to_left.round(decimals=2), atol=0.01)
    assert image[:, 40:].abs().sum() == 0  # nothing else drawn
    invisible = skeleton_images(keypoints, torch.zeros(1, 17, dtype=torch.bool), 64)
    assert invisible.abs().sum() == 0


def _tiny_controlnet_pipeline(folder):
    """Random-init tiny SD + ControlNet components (VAE factor 2, 16-d text), saved to folder."""
    from diffusers import (
        AutoencoderKL,
        ControlNetModel,
        DDIMScheduler,
        StableDiffusionControlNetPipeline,
        UNet2DConditionModel,
    )
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    folder.mkdir(parents=True, exist_ok=True)
    letters = "abcdefghijklmnopqrstuvwxyz,"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    vocab.update({c: i + 2 for i, c in enumerate(letters)})
    vocab.update({c + "</w>": i + 2 + len(letters) for i, c in enumerate(letters)})
    (folder / "vocab.json").write_text(json.dumps(vocab))
    (folder / "merges.txt").write_text("#version: 0.2\n")
    tokenizer = CLIPTokenizer(str(folder / "vocab.json"), str(folder / "merges.txt"),
                              model_max_length=48)
    torch.manual_seed(0)
    text = CLIPTextModel(CLIPTextConfig(
        vocab_size=len(vocab), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
        num_attention_heads=2, max_position_embeddings=48, projection_dim=16, bos_token_id=0,
        eos_token_id=1, pad_token_id=1))
    blocks = dict(block_out_channels=(8, 16), layers_per_block=1,
                  down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
                  cross_attention_dim=16, attention_head_dim=2, norm_num_groups=4)
    unet = UNet2DConditionModel(sample_size=TINY_SIDE // 2, out_channels=4,
                                up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"), **blocks)
    controlnet = ControlNetModel(conditioning_embedding_out_channels=(4, 8), **blocks)
    with torch.no_grad():  # ControlNet's zero-initialised convs would make the pose invisible
        for zero in (*controlnet.controlnet_down_blocks, controlnet.controlnet_mid_block,
                     controlnet.controlnet_cond_embedding.conv_out):
            zero.weight.normal_(0, 0.3)
    vae = AutoencoderKL(block_out_channels=(8, 16), down_block_types=("DownEncoderBlock2D",) * 2,
                        up_block_types=("UpDecoderBlock2D",) * 2, latent_channels=4,
                        norm_num_groups=4, layers_per_block=1)
    pipe = StableDiffusionControlNetPipeline(
        vae=vae, text_encoder=text, tokenizer=tokenizer, unet=unet, controlnet=controlnet,
        scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
        requires_safety_checker=False)
    pipe.save_pretrained(folder / "pipeline")
    return folder / "pipeline"


@pytest.fixture(scope="module")
def pipeline_dir(tmp_path_factory):
    return _tiny_controlnet_pipeline(tmp_path_factory.mktemp("tiny_controlnet"))


@pytest.fixture(scope="module")
def diffusers_synth(pipeline_dir):
    folder = pipeline_dir
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StandInModelWarning)
        return make_synthesizer("diffusers", TINY_SIDE, model_dir=folder, steps=2,
                                guidance_scale=1.0, prompt="a person")


@pytest.fixture(scope="module")
def two_poses(poses):
    return poses.take(np.array([0, 1]))


@pytest.fixture(scope="module")
def generated(diffusers_synth, two_poses):
    return diffusers_synth(two_poses, seed=1)


def test_diffusers_backend_frames(diffusers_synth, two_poses, generated):
    side = TINY_SIDE
    assert generated.images.shape == (2, 3, side, side)
    assert generated.masks.shape == (2, 1, side, side)
    images = generated.images
    assert torch.isfinite(images).all() and images.min() >= 0 and images.max() <= 1
    assert generated.palette is None and generated.body.keypoints.shape == (2, 17, 2)
    assert torch.equal(diffusers_synth(two_poses, seed=1).images, images)
    # the pose conditions the frames: same noise, different skeletons, different images
    assert not torch.equal(images[0], images[1])


def test_diffusers_backend_portrait_and_normal_condition(diffusers_synth, two_poses, generated):
    """With a portrait, image-to-image from it; the normal condition is PSHuman's normal colours
    on white."""
    side = TINY_SIDE
    portrait = torch.rand(3, 40, 30, generator=torch.Generator().manual_seed(0))
    skeletons = diffusers_synth.conditions(generated.body)
    assert skeletons.shape == (2, 3, side, side) and skeletons.max() > 0
    diffusers_synth.condition = "normals"
    try:
        normals = diffusers_synth.conditions(generated.body)
        assert torch.all(normals.permute(0, 2, 3, 1)[generated.masks[:, 0] == 0] == 1)
        out = diffusers_synth(two_poses, portrait, seed=1)
    finally:
        diffusers_synth.condition = "skeleton"
    assert out.images.shape == (2, 3, side, side) and torch.isfinite(out.images).all()
    assert not torch.equal(out.images, generated.images)


def test_diffusers_dataset_from_the_command_line(pipeline_dir, tmp_path):
    out = tmp_path / "ds"
    status = main(["build", "--motion", "default", "--out", str(out), "--anchors", "1",
                   "--neighbours", "1", "--windows-per-shard", "1", "--synth", "diffusers",
                   "--model", str(pipeline_dir), "--resolution", str(TINY_SIDE), "--steps", "2",
                   "--guidance-scale", "1", "--prompt", "a person", "--no-progress"])
    assert status == 0 and validate(out).ok
    assert read_format(out)["synth"]["name"] == "diffusers"
    item = DrPoseDataset(out)[1]
    assert item["image"].shape == (3, TINY_SIDE, TINY_SIDE) and "palette" not in item


def test_diffusers_backend_needs_a_local_pipeline(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"model_index\.json"):
        DiffusersSynthesizer(tmp_path)
    with pytest.raises(ValueError, match="model folder"):
        make_synthesizer("diffusers", SIDE)
    with pytest.raises(ValueError, match="unknown synthesizer"):
        make_synthesizer("mimo", SIDE)
