"""The random PSHuman-shaped pipeline folder: full-size shapes (on the meta device) and the small
variant written, loaded through PSHuman's loading path and run."""

from __future__ import annotations

import json

import torch
from pshuman_reference import REFERENCE

from drpose.models import MultiViewUNet
from drpose.pipelines import MultiViewPipeline
from drpose.pipelines.random_pshuman import main, unet_config, vision_config


def test_full_size_unet_is_pshumans():
    with torch.device("meta"):
        unet = MultiViewUNet(**unet_config(small=False, image_side=768))
    listing = (REFERENCE / "pshuman_unet_state_dict.tsv").read_text().splitlines()[1:]
    expected = [(n, tuple(json.loads(s))) for n, s, _ in (line.split("\t") for line in listing)]
    assert [(n, tuple(t.shape)) for n, t in unet.state_dict().items()] == expected
    assert sum(p.numel() for p in unet.parameters()) == 919_783_684
    assert vision_config().projection_dim * 2 == unet.config.projection_class_embeddings_input_dim


def test_small_folder_loads_and_runs(tmp_path):
    assert main(["--out", str(tmp_path), "--small"]) == 0
    assert json.loads((tmp_path / "unet" / "config.json").read_text())["_class_name"] == (
        "UNetMV2DConditionModel")  # PSHuman's format: loaded by MultiViewUNet.from_pshuman
    pipe = MultiViewPipeline.from_pretrained(tmp_path)
    assert pipe.prompt_embeds.shape == (2, 7, 77, 64)
    assert pipe.scheduler.config.prediction_type == "v_prediction"
    assert pipe.vae_scale_factor == 8 and pipe.unet.config.sample_size == 8
    assert {p.dtype for p in pipe.unet.parameters()} == {torch.float32}  # float16 files
    blocks = [n for n, _ in pipe.unet.named_modules() if n.endswith("attn_mv")]
    assert len(blocks) == 16
    out = pipe(torch.rand(1, 3, 64, 64), num_inference_steps=1, guidance_scale=1.0, decode=False)
    assert out.normal_latents.shape == (1, 7, 4, 8, 8)
