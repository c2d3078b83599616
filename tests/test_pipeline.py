"""MultiViewPipeline with tiny random-init components: conditioning, CFG layout, DDIM loop,
chunked decode, PNG grid, local save/load (PSHuman's conventions from
../shared/reference/pshuman_scheduler_and_pipeline.json)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from pshuman_reference import REFERENCE

from drpose.pipelines import MultiViewPipeline
from drpose.pipelines.multiview import PSHUMAN_DDIM, face_crop

SIDE = 16  # image side; latents 8x8 (tiny VAE factor 2)
VIEWS, BODY = 7, 6


@pytest.fixture(scope="module")
def pipe() -> MultiViewPipeline:
    pipe = MultiViewPipeline.tiny(seed=0)
    for block in pipe.unet.modules():  # attn_mv.to_out starts at zero (as PSHuman): give weights
        if hasattr(block, "attn_mv"):
            torch.nn.init.normal_(block.attn_mv.to_out[0].weight, std=0.05)
    return pipe


def image(batch: int = 1, seed: int = 0) -> torch.Tensor:
    return torch.rand(batch, 3, SIDE, SIDE, generator=torch.Generator().manual_seed(seed))


def test_outputs_and_grid(pipe, tmp_path):
    out = pipe(
        image(),
        num_inference_steps=2,
        generator=torch.Generator().manual_seed(0),
        grid_path=tmp_path / "grid.png",
    )
    assert out.normals.shape == out.colours.shape == (1, VIEWS, 3, SIDE, SIDE)
    assert out.normal_latents.shape == out.colour_latents.shape == (1, VIEWS, 4, 8, 8)
    assert out.normals.min() >= 0 and out.normals.max() <= 1
    grid = Image.open(tmp_path / "grid.png")
    assert grid.size == (VIEWS * SIDE, 2 * SIDE)
    pixels = torch.from_numpy(np.array(grid)).float() / 255
    torch.testing.assert_close(
        pixels[SIDE:, 2 * SIDE : 3 * SIDE],
        out.colours[0, 2].permute(1, 2, 0),
        rtol=0,
        atol=0.5 / 255 + 1e-6,
    )


def test_condition_matches_pshuman_conditioning(pipe):
    x = image(batch=2)
    cond = pipe.encode_condition(x, generator=torch.Generator().manual_seed(5))
    assert cond.image_latents.shape == (2 * VIEWS, 4, 8, 8)
    with torch.no_grad():
        body = pipe.vae.encode(2 * x - 1).latent_dist.mode() * pipe.vae.config.scaling_factor
        face = pipe.vae.encode(2 * face_crop(x) - 1).latent_dist.mode()
        face = face * pipe.vae.config.scaling_factor
    latents = cond.image_latents.view(2, VIEWS, 4, 8, 8)
    for b in range(2):
        for v in range(BODY):
            torch.testing.assert_close(latents[b, v], body[b], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(latents[b, BODY], face[b], rtol=1e-5, atol=1e-5)

    # class labels: noise level 0 augmentation, then the level's embedding [cos(0) x E/2, sin(0)]
    labels = cond.class_labels.view(2, VIEWS, -1)
    embed = labels.shape[-1] // 2
    level = torch.cat([torch.ones(embed // 2), torch.zeros(embed // 2)])
    torch.testing.assert_close(labels[..., embed:], level.expand(2, VIEWS, -1))
    with torch.no_grad():
        clip = pipe.image_encoder(pipe.clip_pixels(torch.stack([x, face_crop(x)], 1).flatten(0, 1)))
    abar0 = pipe.image_noising_scheduler.alphas_cumprod[0]
    noise = torch.randn(4, embed, generator=torch.Generator().manual_seed(5))
    norm = pipe.image_normalizer
    expected = (
        abar0.sqrt() * (clip.image_embeds - norm.mean) / norm.std + (1 - abar0).sqrt() * noise
    ) * norm.std + norm.mean
    expected = expected.view(2, 2, embed)
    torch.testing.assert_close(
        labels[:, :BODY, :embed], expected[:, :1].expand(2, BODY, embed), rtol=1e-5, atol=1e-5
    )
    torch.testing.assert_close(labels[:, BODY, :embed], expected[:, 1], rtol=1e-5, atol=1e-5)
    # prompt embeddings: (domain, object, view) rows of the fixed table
    prompts = cond.prompt_embeds.view(2, 2, VIEWS, *pipe.prompt_embeds.shape[2:])
    assert torch.equal(prompts, pipe.prompt_embeds[:, None].expand_as(prompts))


def test_unet_step_cfg_layout_is_pshumans(pipe):
    """Guided output = uncond + g (cond - uncond), from one UNet call on rows
    [uncond-normal | cond-normal | uncond-colour | cond-colour] (checked row by row)."""
    cond = pipe.encode_condition(image(), generator=torch.Generator().manual_seed(0))
    latents = torch.randn(2 * VIEWS, 4, 8, 8, generator=torch.Generator().manual_seed(1))
    t = torch.tensor(501)
    calls = []
    hook = pipe.unet.register_forward_hook(lambda m, args, kwargs_out: calls.append(args))
    try:
        with torch.no_grad():
            guided = pipe.unet_step(latents, t, cond, guidance_scale=3.0)
    finally:
        hook.remove()
    ((sample, _, context),) = calls
    zeros = torch.zeros_like(cond.image_latents)
    expected_sample = torch.cat(
        [
            torch.cat([latents[:VIEWS], zeros], 1),
            torch.cat([latents[:VIEWS], cond.image_latents], 1),
            torch.cat([latents[VIEWS:], zeros], 1),
            torch.cat([latents[VIEWS:], cond.image_latents], 1),
        ]
    )
    assert torch.equal(sample, expected_sample)
    p = cond.prompt_embeds
    assert torch.equal(context, torch.cat([p[0], p[0], p[1], p[1]]))
    with torch.no_grad():
        raw = pipe.unet(
            sample,
            t,
            context,
            class_labels=torch.cat([torch.zeros_like(cond.class_labels), cond.class_labels] * 2),
        ).sample
    uncond = torch.cat([raw[0:7], raw[14:21]])
    conditional = torch.cat([raw[7:14], raw[21:28]])
    torch.testing.assert_close(guided, uncond + 3.0 * (conditional - uncond))
    with torch.no_grad():
        unguided = pipe.unet_step(latents, t, cond, guidance_scale=1.0)
    torch.testing.assert_close(unguided, conditional, rtol=1e-5, atol=1e-5)


def test_call_is_the_documented_step_loop(pipe):
    x = image()
    out = pipe(x, num_inference_steps=2, generator=torch.Generator().manual_seed(7), decode=False)
    generator = torch.Generator().manual_seed(7)
    with torch.no_grad():
        cond = pipe.encode_condition(x, generator=generator)
        latents = pipe.prepare_latents(cond, generator)
        pipe.scheduler.set_timesteps(2)
        assert pipe.scheduler.timesteps.tolist() == [501, 1]  # leading spacing, offset 1
        for t in pipe.scheduler.timesteps:
            model_output = pipe.unet_step(latents, t, cond, 3.0)
            latents = pipe.scheduler.step(
                model_output, t, latents, eta=1.0, generator=generator
            ).prev_sample
    assert out.normals is None
    torch.testing.assert_close(out.normal_latents.flatten(0, 1), latents[:VIEWS], rtol=0, atol=0)
    torch.testing.assert_close(out.colour_latents.flatten(0, 1), latents[VIEWS:], rtol=0, atol=0)


def test_unet_step_is_differentiable(pipe):
    cond = pipe.encode_condition(image(), generator=torch.Generator().manual_seed(0))
    latents = torch.randn(2 * VIEWS, 4, 8, 8, requires_grad=True)
    pipe.unet_step(latents, torch.tensor(300), cond, 3.0).square().mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0


def test_decode_runs_in_chunks(pipe):
    latents = torch.randn(2 * VIEWS, 4, 8, 8)
    sizes = []
    hook = pipe.vae.decoder.register_forward_pre_hook(lambda m, args: sizes.append(len(args[0])))
    try:
        with torch.no_grad():
            chunked = pipe.decode(latents, chunk_size=3)
            whole = pipe.decode(latents, chunk_size=len(latents))
    finally:
        hook.remove()
    assert sizes == [3, 3, 3, 3, 2, 14]
    assert chunked.shape == (14, 3, SIDE, SIDE)
    torch.testing.assert_close(chunked, whole, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("unet_format", ["diffusers", "pshuman"])
def test_save_and_load_local_folder(pipe, tmp_path, unet_format):
    pipe.save_pretrained(tmp_path)
    if unet_format == "pshuman":  # a PSHuman checkpoint folder: their unet/config.json
        shutil.rmtree(tmp_path / "unet")
        pipe.unet.save_pshuman(tmp_path)
    loaded = MultiViewPipeline.from_pretrained(tmp_path)
    assert loaded.scheduler.config.beta_schedule == "linear"
    assert loaded.unet.config.prediction_type == "epsilon"
    kwargs = {"num_inference_steps": 1, "decode": False}
    a = pipe(image(), generator=torch.Generator().manual_seed(3), **kwargs)
    b = loaded(image(), generator=torch.Generator().manual_seed(3), **kwargs)
    torch.testing.assert_close(b.normal_latents, a.normal_latents, rtol=0, atol=0)
    with pytest.raises(FileNotFoundError, match="prompt embeddings"):
        MultiViewPipeline.from_pretrained(tmp_path, prompt_embeds=tmp_path / "nowhere")


def test_pil_input_equals_tensor_input(pipe):
    x = (image() * 255).round() / 255
    pil = Image.fromarray((x[0].permute(1, 2, 0) * 255).round().byte().numpy())
    a = pipe.encode_condition(x, generator=torch.Generator().manual_seed(0))
    b = pipe.encode_condition(pil, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(b.image_latents, a.image_latents)


def test_smplx_variant_takes_condition_maps():
    pipe = MultiViewPipeline.tiny(seed=0, in_channels=12)
    maps = torch.rand(1, BODY, 3, SIDE, SIDE)
    cond = pipe.encode_condition(image(), maps)
    assert cond.image_latents.shape == (VIEWS, 8, 8, 8)
    with torch.no_grad():
        face = pipe.encode_latents(face_crop(maps[:, 0]))
    torch.testing.assert_close(cond.image_latents[BODY, 4:], face[0], rtol=1e-5, atol=1e-5)
    out = pipe(image(), maps, num_inference_steps=1, decode=False)
    assert out.normal_latents.shape == (1, VIEWS, 4, 8, 8)
    with pytest.raises(ValueError, match="smplx_maps"):
        pipe.encode_condition(image())


def test_without_face_view():
    pipe = MultiViewPipeline.tiny(seed=0, face_view=False, face_fusion=False)
    out = pipe(image(), num_inference_steps=1)
    assert out.normals.shape == (1, BODY, 3, SIDE, SIDE)


def test_scheduler_must_agree_with_checkpoint_prediction_type(pipe):
    from diffusers import DDIMScheduler

    with pytest.raises(ValueError, match="prediction_type"):
        MultiViewPipeline(
            pipe.unet,
            pipe.vae,
            pipe.image_encoder,
            pipe.feature_extractor,
            pipe.image_normalizer,
            pipe.image_noising_scheduler,
            DDIMScheduler(**PSHUMAN_DDIM, prediction_type="v_prediction"),
            pipe.prompt_embeds,
        )


def test_scheduler_is_pshumans():
    import json

    from diffusers import DDIMScheduler

    reference = json.loads(
        (REFERENCE / "pshuman_scheduler_and_pipeline.json").read_text()
    )["noise_scheduler_inference"]
    scheduler = DDIMScheduler(**PSHUMAN_DDIM, prediction_type="epsilon")
    torch.testing.assert_close(
        scheduler.betas, torch.tensor(reference["betas_all_1000"]), rtol=1e-6, atol=1e-9
    )
    for step, value in reference["alphas_cumprod_at"].items():
        assert abs(scheduler.alphas_cumprod[int(step)].item() - value) < 1e-6
    scheduler.set_timesteps(reference["inference_steps"])
    assert scheduler.timesteps.tolist() == reference["timesteps_40_leading"]


def test_to_moves_every_component():
    pipe = MultiViewPipeline.tiny(seed=0)
    assert pipe.to("cpu") is pipe  # unCLIP's normaliser has its own `to` signature
    pipe.to(dtype=torch.float64)
    tensors = [*pipe.unet.parameters(), *pipe.vae.parameters(), *pipe.image_encoder.parameters(),
               *pipe.image_normalizer.parameters(), pipe.prompt_embeds]
    assert {t.dtype for t in tensors} == {torch.float64}
    output = pipe(image().double(), num_inference_steps=2,
                  generator=torch.Generator().manual_seed(0))
    assert output.colour_latents.dtype == torch.float64 and torch.isfinite(output.colours).all()


def write_pshuman_repository(pipe: MultiViewPipeline, root) -> None:
    """The folders a PSHuman user has: the checkpoint repository (float16 files, PSHuman's UNet
    format, tokenizer/ and text_encoder/ unused, model_index.json) and, inside it, a checkout of
    PSHuman's code holding the prompt embeddings."""
    import copy
    import json

    half = copy.deepcopy(pipe).to(dtype=torch.float16)
    half.save_pretrained(root)
    shutil.rmtree(root / "unet")
    half.unet.save_pshuman(root)
    code = root / "PSHuman" / "mvdiffusion" / "data" / "fixed_prompt_embeds_7view"
    shutil.move(root / "prompt_embeds", code)
    for unused in ("tokenizer", "text_encoder"):
        (root / unused).mkdir()
    index = {"_class_name": "StableUnCLIPImg2ImgPipeline"}
    (root / "model_index.json").write_text(json.dumps(index))


def test_pshuman_repository_loads_in_the_dtype_asked_for(pipe, tmp_path):
    write_pshuman_repository(pipe, tmp_path)
    code = tmp_path / "PSHuman"
    loaded = MultiViewPipeline.from_pretrained(tmp_path, prompt_embeds=code)
    modules = (loaded.unet, loaded.vae, loaded.image_encoder, loaded.image_normalizer)
    dtypes = {p.dtype for m in modules for p in m.parameters()} | {loaded.prompt_embeds.dtype}
    assert dtypes == {torch.float32}  # float16 files, float32 by default
    assert loaded.scheduler.config.prediction_type == "epsilon"
    kwargs = {"num_inference_steps": 1, "decode": False}
    a = pipe(image(), generator=torch.Generator().manual_seed(3), **kwargs)
    b = loaded(image(), generator=torch.Generator().manual_seed(3), **kwargs)
    torch.testing.assert_close(b.normal_latents, a.normal_latents, rtol=0.05, atol=0.05)
    bf16 = MultiViewPipeline.from_pretrained(tmp_path, prompt_embeds=code,
                                             torch_dtype="bfloat16")
    modules = (bf16.unet, bf16.vae, bf16.image_encoder, bf16.image_normalizer)
    dtypes = {p.dtype for m in modules for p in m.parameters()} | {bf16.prompt_embeds.dtype}
    assert dtypes == {torch.bfloat16}
    # the code checkout inside the folder is found without prompt_embeds=
    shutil.move(code / "mvdiffusion", tmp_path / "mvdiffusion")
    assert MultiViewPipeline.from_pretrained(tmp_path).prompt_embeds.shape == (2, VIEWS, 8, 32)


def test_missing_scheduler_is_pshumans_said(pipe, tmp_path):
    write_pshuman_repository(pipe, tmp_path)
    shutil.rmtree(tmp_path / "scheduler")
    with pytest.warns(UserWarning, match="PSHUMAN_SCHEDULER"):
        loaded = MultiViewPipeline.from_pretrained(tmp_path, prompt_embeds=tmp_path / "PSHuman")
    assert loaded.scheduler.config.prediction_type == "v_prediction"
    assert loaded.scheduler.config.beta_schedule == "linear"


@pytest.mark.parametrize(
    "remove, match",
    [
        ("vae", r"lacks component\(s\) vae \(no folder .*/vae\)"),
        ("vae/diffusion_pytorch_model.safetensors", r"vae \(no weights .*/vae/diffusion_py"),
        ("feature_extractor/preprocessor_config.json",
         r"feature_extractor \(no .*feature_extractor/preprocessor_config\.json\)"),
        ("image_noising_scheduler", "image_noising_scheduler"),
    ],
)
def test_missing_component_is_named_with_its_folder(pipe, tmp_path, remove, match):
    pipe.save_pretrained(tmp_path)
    path = tmp_path / remove
    shutil.rmtree(path) if path.is_dir() else path.unlink()
    with pytest.raises(FileNotFoundError, match=match) as error:
        MultiViewPipeline.from_pretrained(tmp_path)
    assert str(tmp_path) in str(error.value)


def test_a_component_folder_given_as_the_pipeline_gets_a_hint(pipe, tmp_path):
    pipe.save_pretrained(tmp_path)
    with pytest.raises(FileNotFoundError, match="pass its parent"):
        MultiViewPipeline.from_pretrained(tmp_path / "unet")
