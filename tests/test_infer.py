"""python -m drpose.infer: matting, PSHuman framing, and the CLI writing every output file."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch
import trimesh
from lora_checkpoint import write_lora_checkpoint
from PIL import Image
from scipy import ndimage

from drpose import infer
from drpose.body import load_smplx, posed_body
from drpose.recon import rig_views
from drpose.render import cameras

BACKGROUND = np.array([0.2, 0.5, 0.3], dtype=np.float32)


@pytest.fixture(scope="module")
def photo():
    """(image (96, 96, 3) on a green background, the person's mask): the stand-in body's front
    view, skin-coloured."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = load_smplx()
    out = posed_body(model, torch.zeros(1, 63))
    vertices = cameras.normalize_body(out.vertices).apply(out.vertices)[0]
    skin = torch.tensor([0.8, 0.5, 0.35]).expand(vertices.shape[0], 3)
    _, colours = rig_views(vertices, out.faces, skin, 96)
    image = colours[0].permute(1, 2, 0).numpy()
    mask = np.abs(image - 1).sum(-1) > 1e-3
    return np.where(mask[..., None], image, BACKGROUND).astype(np.float32), mask


def test_border_colour_matting_recovers_the_mask(photo):
    image, mask = photo
    found = infer.matte_by_border_colour(image)
    iou = (found & mask).sum() / (found | mask).sum()
    assert iou > 0.97


def test_person_mask_prefers_mask_file_then_alpha(photo, tmp_path):
    image, mask = photo
    pixels = (image * 255).astype(np.uint8)
    given = np.zeros_like(mask)
    given[10:20, 10:20] = True
    Image.fromarray(given.astype(np.uint8) * 255).save(tmp_path / "mask.png")
    rgb = Image.fromarray(pixels)
    assert np.array_equal(infer.person_mask(rgb, tmp_path / "mask.png"), given)
    rgba = Image.fromarray(np.dstack([pixels, given.astype(np.uint8) * 255]))
    assert np.array_equal(infer.person_mask(rgba, None), given)


def test_framing_follows_pshuman(photo):
    image, mask = photo
    framed, framed_mask = infer.frame_person(image, mask, 64)
    rows, cols = np.nonzero(framed_mask)
    extent = max(rows.max() - rows.min() + 1, cols.max() - cols.min() + 1)
    assert abs(extent - cameras.INFERENCE_CROP_FRACTION * 64) <= 1.5  # 740/768 of the side
    assert abs((rows.max() + rows.min()) / 2 - 31.5) <= 1 and abs(
        (cols.max() + cols.min()) / 2 - 31.5) <= 1
    away = ~ndimage.binary_dilation(framed_mask, iterations=2)
    assert np.array_equal(framed[away], np.ones_like(framed[away]))  # composited on white


def test_cli_writes_every_output(photo, tmp_path, capsys, monkeypatch):
    monkeypatch.setattr(infer, "default_pipeline_dir", lambda: None)  # whatever this machine built
    image, _ = photo
    path = tmp_path / "person.png"
    Image.fromarray((image * 255).astype(np.uint8)).save(path)
    out = tmp_path / "out"
    with pytest.warns(UserWarning, match="RANDOM-INIT"):
        seconds = infer.infer_image(infer.parse_args(
            [str(path), "--out", str(out), "--steps", "2", "--resolution", "48", "--fit-iters",
             "5", "--carve-iters", "4", "--poisson-depth", "6"]))
    for name in ("views.png", "mesh.obj", "mesh.glb", "turntable.png"):
        assert (out / name).stat().st_size > 0, name
    mesh = trimesh.load(out / "mesh.glb", force="mesh")
    assert len(mesh.faces) > 100 and mesh.visual.kind == "vertex"
    assert Image.open(out / "turntable.png").size[0] > 8 * infer.TURNTABLE_SIZE
    assert set(seconds) == {"matting", "generation", "reconstruction", "export"}
    assert "reconstruction" in capsys.readouterr().out


def test_lora_checkpoint_round_trip(tmp_path):
    """A LoRA checkpoint written as drpose.train writes one (the adapted UNet's trainable
    parameters by name) loads into a fresh pipeline and reproduces the adapted UNet."""
    from drpose.pipelines import MultiViewPipeline

    trained = write_lora_checkpoint(tmp_path, seed=0)
    fresh = MultiViewPipeline.tiny(seed=0)
    sample = torch.randn(2 * fresh.views, fresh.unet.config.in_channels, 16, 16)
    hidden = torch.randn(2 * fresh.views, 8, fresh.unet.config.cross_attention_dim)
    labels = torch.randn(2 * fresh.views, fresh.unet.config.projection_class_embeddings_input_dim)

    def run(pipe):
        with torch.no_grad():
            return pipe.unet(sample, 10, hidden, class_labels=labels).sample

    before = run(fresh)
    infer.load_lora(fresh, tmp_path)
    torch.testing.assert_close(run(fresh), run(trained))
    assert (run(fresh) - before).abs().max() > 1e-3


def test_pipeline_folder_is_loaded(tmp_path):
    from drpose.pipelines import MultiViewPipeline

    MultiViewPipeline.tiny(seed=3).save_pretrained(tmp_path / "pipe")
    loaded = infer.load_pipeline(tmp_path / "pipe", None)
    expected = MultiViewPipeline.tiny(seed=3).unet.state_dict()
    for name, value in loaded.unet.state_dict().items():
        torch.testing.assert_close(value, expected[name])


def test_pipeline_names(monkeypatch, tmp_path):
    from drpose.pipelines import MultiViewPipeline

    monkeypatch.setattr(infer, "default_pipeline_dir", lambda: None)
    with pytest.raises(FileNotFoundError, match="not built yet"):
        infer.load_pipeline("default", None)
    tiny = infer.load_pipeline("tiny", None, seed=3)
    expected = MultiViewPipeline.tiny(seed=3).unet.state_dict()
    for name, value in tiny.unet.state_dict().items():
        torch.testing.assert_close(value, expected[name])
    MultiViewPipeline.tiny(seed=5).save_pretrained(tmp_path / "pipe")
    monkeypatch.setattr(infer, "default_pipeline_dir", lambda: tmp_path / "pipe")
    default = infer.load_pipeline("default", None)
    expected = MultiViewPipeline.tiny(seed=5).unet.state_dict()
    for name, value in default.unet.state_dict().items():
        torch.testing.assert_close(value, expected[name])
