"""MultiViewUNet: PSHuman's state-dict layout, loading, and the three attentions of a block.

The block is checked against an independent plain-torch implementation written from
../shared/reference/pshuman_attention.md (loops over objects and image rows, explicit softmax,
the (3i+1, 3j+1) face sampling), and the whole UNet against the behaviours that document lists.
"""

from __future__ import annotations

import copy
import json
import math
import shutil
import warnings
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from diffusers.models.attention_processor import AttnProcessor2_0
from pshuman_reference import REFERENCE
from safetensors.torch import save_file

from drpose.models import MultiViewUNet, configs
from drpose.models.attention_processors import (
    MultiViewTransformerBlock,
    ViewLayout,
    fuse_face_view,
)

PSHUMAN_PARAMETERS = 919_783_684
PSHUMAN_PARAMETERS_12CH = 919_795_204
VIEWS, BODY = 7, 6


def pshuman_config() -> dict:
    return json.loads((REFERENCE / "pshuman_unet_config.json").read_text())["unet_config_json"]


def listing(name: str) -> list[tuple[str, tuple[int, ...]]]:
    lines = (REFERENCE / name).read_text().splitlines()[1:]
    return [(n, tuple(json.loads(shape))) for n, shape, _ in (line.split("\t") for line in lines)]


def randomise_multiview_outputs(model: torch.nn.Module, std: float = 0.05) -> None:
    """attn_mv.to_out starts at zero (as PSHuman); give it weights so the attention shows."""
    generator = torch.Generator().manual_seed(1)
    for module in model.modules():
        if isinstance(module, MultiViewTransformerBlock):
            out = module.attn_mv.to_out[0]
            with torch.no_grad():
                out.weight.copy_(torch.randn(out.weight.shape, generator=generator) * std)
                out.bias.copy_(torch.randn(out.bias.shape, generator=generator) * std)


@pytest.fixture(scope="module")
def tiny() -> MultiViewUNet:
    torch.manual_seed(0)
    model = MultiViewUNet.tiny().eval()
    randomise_multiview_outputs(model)
    return model


def tiny_inputs(objects: int = 1, side: int = 16, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    rows = 2 * objects * VIEWS
    return {
        "sample": torch.randn(rows, 8, side, side, generator=generator),
        "timestep": torch.tensor(500),
        "encoder_hidden_states": torch.randn(rows, 7, 32, generator=generator),
        "class_labels": torch.randn(rows, 64, generator=generator),
    }


def run(model: MultiViewUNet, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    with torch.no_grad():
        return model(**inputs).sample


# ------------------------------------------------------------------------------------------------
# State dict: PSHuman's layout exactly


def test_state_dict_is_pshumans_exactly():
    with torch.device("meta"):
        model = MultiViewUNet.from_pshuman_config(pshuman_config())
    ours = [(name, tuple(t.shape)) for name, t in model.state_dict().items()]
    assert ours == listing("pshuman_unet_state_dict.tsv")
    assert sum(p.numel() for p in model.parameters()) == PSHUMAN_PARAMETERS
    assert sum(1 for name, _ in ours if ".norm_mv." in name or ".attn_mv." in name) == 16 * 7


def test_state_dict_of_smplx_variant():
    config = {**pshuman_config(), "in_channels": 12}
    with torch.device("meta"):
        model = MultiViewUNet.from_pshuman_config(config)
    ((name, shape),) = listing("pshuman_unet_state_dict_12ch.tsv")
    assert tuple(model.state_dict()[name].shape) == shape
    assert sum(p.numel() for p in model.parameters()) == PSHUMAN_PARAMETERS_12CH


@pytest.mark.parametrize(
    "key, value", [("regress_elevation", True), ("use_dino", True), ("selfattn_block", "other")]
)
def test_pshuman_config_with_other_architecture_is_rejected(key, value):
    with pytest.raises(ValueError, match=key):
        MultiViewUNet.from_pshuman_config({**pshuman_config(), key: value})


def test_pshuman_config_maps_views_and_blocks():
    kwargs_model = MultiViewUNet.from_pshuman_config
    with torch.device("meta"):
        config = kwargs_model(pshuman_config()).config
    assert config.num_body_views == 6 and config.face_view and config.face_fusion
    assert config.joint_domain_attention
    assert config.down_block_types[0] == "CrossAttnDownBlock2D"
    assert config.prediction_type is None


# ------------------------------------------------------------------------------------------------
# Loading: diffusers round trip and PSHuman checkpoint folders


def test_save_pretrained_round_trip(tiny, tmp_path):
    tiny.save_pretrained(tmp_path, safe_serialization=True)
    assert (tmp_path / "diffusion_pytorch_model.safetensors").is_file()
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["num_body_views"] == 6 and "center_input_sample" not in saved
    loaded = MultiViewUNet.from_pretrained(tmp_path).eval()
    inputs = tiny_inputs(side=8)
    torch.testing.assert_close(run(loaded, inputs), run(tiny, inputs), rtol=0, atol=0)


def tiny_pshuman_config() -> dict:
    """PSHuman's config.json with the tiny architecture's sizes (as their code would write it)."""
    return {
        **pshuman_config(),
        "sample_size": 16,
        "down_block_types": ["CrossAttnDownBlockMV2D", "CrossAttnDownBlockMV2D", "DownBlock2D"],
        "up_block_types": ["UpBlock2D", "CrossAttnUpBlockMV2D", "CrossAttnUpBlockMV2D"],
        "block_out_channels": [32, 64, 96],
        "layers_per_block": 1,
        "attention_head_dim": [2, 4, 6],
        "cross_attention_dim": 32,
        "norm_num_groups": 16,
        "projection_class_embeddings_input_dim": 64,
        "decay": 0.9999,  # an EMA key, ignored
    }


def write_checkpoint(root: Path, state_dict: dict, fmt: str, prediction_type: str | None) -> None:
    (root / "unet").mkdir(parents=True)
    (root / "unet" / "config.json").write_text(json.dumps(tiny_pshuman_config()))
    if fmt == "safetensors":
        save_file(state_dict, root / "unet" / "diffusion_pytorch_model.safetensors")
    else:
        torch.save(state_dict, root / "unet" / "diffusion_pytorch_model.bin")
    if prediction_type is not None:
        (root / "scheduler").mkdir()
        scheduler = {"_class_name": "DDIMScheduler", "prediction_type": prediction_type}
        (root / "scheduler" / "scheduler_config.json").write_text(json.dumps(scheduler))


@pytest.mark.parametrize(
    "fmt, dtype, prediction_type",
    [("safetensors", torch.float16, "v_prediction"), ("bin", torch.float32, "epsilon")],
)
def test_from_pshuman_loads_weights_and_prediction_type(
    tiny, tmp_path, fmt, dtype, prediction_type
):
    state_dict = {name: t.to(dtype).contiguous() for name, t in tiny.state_dict().items()}
    write_checkpoint(tmp_path, state_dict, fmt, prediction_type)
    loaded = MultiViewUNet.from_pshuman(tmp_path, torch_dtype=dtype)
    assert loaded.config.prediction_type == prediction_type
    assert all(p.dtype == dtype for p in loaded.parameters())
    for name, t in loaded.state_dict().items():
        torch.testing.assert_close(t, state_dict[name], rtol=0, atol=0)
    loaded32 = MultiViewUNet.from_pshuman(tmp_path)  # float32 whatever the file holds
    assert {p.dtype for p in loaded32.parameters()} == {torch.float32}
    inputs = tiny_inputs(side=8)
    expected = run(tiny, inputs)
    tolerance = {"rtol": 0, "atol": 0} if dtype == torch.float32 else {"rtol": 0.05, "atol": 0.05}
    torch.testing.assert_close(run(loaded32, inputs), expected, **tolerance)


def test_from_pshuman_lists_missing_and_unexpected_keys(tiny, tmp_path):
    state_dict = dict(tiny.state_dict())
    dropped = "down_blocks.0.attentions.0.transformer_blocks.0.attn_mv.to_q.weight"
    del state_dict[dropped]
    state_dict["conv_in.extra"] = torch.zeros(1)
    write_checkpoint(tmp_path, state_dict, "safetensors", "epsilon")
    with pytest.raises(ValueError) as error:
        MultiViewUNet.from_pshuman(tmp_path)
    assert "1 missing: " + dropped in str(error.value)
    assert "1 unexpected: conv_in.extra" in str(error.value)


def test_without_scheduler_config_pshumans_scheduler_is_used_and_said(tiny, tmp_path):
    write_checkpoint(tmp_path, dict(tiny.state_dict()), "safetensors", prediction_type=None)
    reference = json.loads((REFERENCE / "pshuman_scheduler_and_pipeline.json").read_text())
    candidate = reference["noise_scheduler_inference"]["full_config_candidate_A_v_prediction"]
    expected = {key: value for key, value in candidate.items() if key != "skip_prk_steps"}
    assert expected == configs.PSHUMAN_SCHEDULER
    with pytest.warns(UserWarning, match="PSHUMAN_SCHEDULER.*'v_prediction'"):
        default = MultiViewUNet.from_pshuman(tmp_path)
    assert default.config.prediction_type == "v_prediction"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # given: nothing to say
        given = MultiViewUNet.from_pshuman(tmp_path, prediction_type="epsilon")
    assert given.config.prediction_type == "epsilon"


def test_prediction_type_contradicting_the_scheduler_config_is_refused(tiny, tmp_path):
    write_checkpoint(tmp_path, dict(tiny.state_dict()), "safetensors", "epsilon")
    with pytest.raises(ValueError, match="contradicts"):
        MultiViewUNet.from_pshuman(tmp_path, prediction_type="v_prediction")


def test_from_pshuman_takes_the_unet_folder_alone(tiny, tmp_path):
    state_dict = {name: t.half().contiguous() for name, t in tiny.state_dict().items()}
    write_checkpoint(tmp_path / "repo", state_dict, "safetensors", "epsilon")
    # unet/ of the repository: the scheduler config beside it is read
    inside = MultiViewUNet.from_pshuman(tmp_path / "repo" / "unet")
    assert inside.config.prediction_type == "epsilon"
    # unet/ copied elsewhere alone: PSHuman's scheduler, said
    shutil.copytree(tmp_path / "repo" / "unet", tmp_path / "alone" / "my_unet")
    with pytest.warns(UserWarning, match="PSHUMAN_SCHEDULER"):
        alone = MultiViewUNet.from_pshuman(tmp_path / "alone" / "my_unet")
    assert alone.config.prediction_type == "v_prediction"
    for model in (inside, alone):
        for name, t in model.state_dict().items():
            assert t.dtype == torch.float32 and torch.equal(t, state_dict[name].float())


def test_from_pshuman_takes_a_hugging_face_cache_folder(tiny, tmp_path):
    cache = tmp_path / "models--pengHTYX--PSHuman_Unclip_768_6views"
    write_checkpoint(cache / "snapshots" / "abc123", dict(tiny.state_dict()), "safetensors",
                     "v_prediction")
    loaded = MultiViewUNet.from_pshuman(cache, torch_dtype="bfloat16")
    assert loaded.config.prediction_type == "v_prediction"
    assert {p.dtype for p in loaded.parameters()} == {torch.bfloat16}


def test_from_pshuman_names_what_it_looked_for(tmp_path):
    (tmp_path / "empty").mkdir()
    with pytest.raises(FileNotFoundError, match=r"empty/unet/config\.json"):
        MultiViewUNet.from_pshuman(tmp_path / "empty")
    with pytest.raises(FileNotFoundError, match="not a folder"):
        MultiViewUNet.from_pshuman(tmp_path / "nowhere")


@pytest.mark.parametrize("dtype", ["int8", "float128", torch.int32])
def test_torch_dtype_must_be_a_floating_dtype(tiny, tmp_path, dtype):
    write_checkpoint(tmp_path, dict(tiny.state_dict()), "safetensors", "epsilon")
    with pytest.raises(ValueError, match="torch_dtype"):
        MultiViewUNet.from_pshuman(tmp_path, torch_dtype=dtype)


def test_pshumans_no_op_keywords_are_accepted(tiny):
    inputs = tiny_inputs(side=8)
    with torch.no_grad():
        plain = tiny(**inputs, return_dict=False)[0]
        # as PSHuman's pipeline calls its UNet (pipeline_mvdiffusion_unclip.py:L610-617)
        theirs = tiny(inputs["sample"], inputs["timestep"],
                      encoder_hidden_states=inputs["encoder_hidden_states"], dino_feature=None,
                      class_labels=inputs["class_labels"], cross_attention_kwargs=None,
                      return_dict=False)[0]
        recorded = tiny(**inputs, vis_max_min=False).sample
    torch.testing.assert_close(theirs, plain, rtol=0, atol=0)
    torch.testing.assert_close(recorded, plain, rtol=0, atol=0)


@pytest.mark.parametrize(
    "keyword, value, match",
    [
        ("dino_feature", torch.zeros(1, 4), r"dino_feature=<Tensor \(1, 4\)> is not supported"),
        ("vis_max_min", True, "vis_max_min=True is not supported"),
        ("dino_features", None, "unexpected keyword argument 'dino_features'"),
    ],
)
def test_other_keywords_are_refused_by_name(tiny, keyword, value, match):
    with pytest.raises(TypeError, match=match):
        tiny(**tiny_inputs(side=8), **{keyword: value})


# ------------------------------------------------------------------------------------------------
# One block against an independent implementation of pshuman_attention.md


def softmax_attention(q, k, v, heads):
    """(T, C) queries, (S, C) keys/values -> (T, C); scale 1/sqrt(C/heads)."""
    d = q.shape[-1] // heads
    qh, kh, vh = (x.reshape(x.shape[0], heads, d).transpose(0, 1) for x in (q, k, v))
    weights = torch.softmax(qh @ kh.transpose(1, 2) / math.sqrt(d), dim=-1)
    return (weights @ vh).transpose(0, 1).reshape(q.shape[0], -1)


def project(attn, tokens, context=None):
    context = tokens if context is None else context
    out = softmax_attention(
        tokens @ attn.to_q.weight.T,
        context @ attn.to_k.weight.T,
        context @ attn.to_v.weight.T,
        attn.heads,
    )
    return out @ attn.to_out[0].weight.T + attn.to_out[0].bias


def reference_block(block, x, context, side, face_fusion):
    """PSHuman's block, sections 4-7 of pshuman_attention.md, one object/row at a time."""
    rows, tokens, _ = x.shape
    half, objects = rows // 2, rows // VIEWS
    h = block.norm1(x)
    a = torch.empty_like(x)
    for r in range(half):  # joint normal/colour attention: row r with its twin r + half
        out = project(block.attn1, torch.cat([h[r], h[half + r]]))
        a[r], a[half + r] = out[:tokens], out[tokens:]
    if face_fusion:
        s = side // 3
        fused = a.clone()
        for g in range(objects):
            front = a[g * VIEWS].view(side, side, -1)
            face = a[g * VIEWS + VIEWS - 1].view(side, side, -1)
            sampled = face[1::3, 1::3][:s, :s]  # bilinear 3x downsampling = pixel (3i+1, 3j+1)
            region = fused[g * VIEWS].view(side, side, -1)
            region[:s, s : side - s] = 0.5 * front[:s, s : side - s] + 0.5 * sampled
        a = fused
    x = x + a
    h = block.norm_mv(x)
    mv = torch.zeros_like(x)
    for g in range(objects):
        for y in range(side):
            row = slice(y * side, (y + 1) * side)
            toks = torch.cat([h[g * VIEWS + v, row] for v in range(BODY)])
            out = project(block.attn_mv, toks)
            for v in range(BODY):
                mv[g * VIEWS + v, row] = out[v * side : (v + 1) * side]
    x = x + mv  # face rows: mv stays zero
    h = block.norm2(x)
    x = x + torch.stack([project(block.attn2, h[r], context[r]) for r in range(rows)])
    h = block.norm3(x)
    value, gate = (h @ block.ff.net[0].proj.weight.T + block.ff.net[0].proj.bias).chunk(2, dim=-1)
    return x + (value * F.gelu(gate)) @ block.ff.net[2].weight.T + block.ff.net[2].bias


def tiny_block(tiny: MultiViewUNet, face_fusion: bool) -> MultiViewTransformerBlock:
    block = copy.deepcopy(tiny.down_blocks[0].attentions[0].transformer_blocks[0])
    block.layout = ViewLayout(BODY, True, face_fusion, True)
    return block.double()


@pytest.mark.parametrize("face_fusion", [True, False])
def test_block_matches_independent_pshuman_attention(tiny, face_fusion):
    block = tiny_block(tiny, face_fusion)
    side, objects = 12, 2  # 12: divisible by 3, where PSHuman's face fusion is defined
    generator = torch.Generator().manual_seed(3)
    x = torch.randn(2 * objects * VIEWS, side * side, 32, generator=generator, dtype=torch.float64)
    context = torch.randn(x.shape[0], 5, 32, generator=generator, dtype=torch.float64)
    with torch.no_grad():
        ours = block(x, encoder_hidden_states=context)
        expected = reference_block(block, x, context, side, face_fusion)
    torch.testing.assert_close(ours, expected, rtol=1e-10, atol=1e-10)


def test_face_fusion_samples_face_at_3i_plus_1():
    side, channels = 12, 3
    x = torch.randn(VIEWS, side * side, channels, dtype=torch.float64)
    out = fuse_face_view(x, VIEWS, side, side).view(VIEWS, side, side, channels)
    grid = x.view(VIEWS, side, side, channels)
    expected = grid.clone()
    expected[0, :4, 4:8] = 0.5 * grid[0, :4, 4:8] + 0.5 * grid[6, 1::3, 1::3][:4, :4]
    torch.testing.assert_close(out, expected, rtol=1e-12, atol=1e-12)


def test_rowwise_attention_mixes_one_row_across_body_views_only(tiny):
    block = tiny_block(tiny, face_fusion=True)
    side = 8
    x = torch.randn(2 * VIEWS, side * side, 32, dtype=torch.float64)
    y = 5
    perturbed = x.clone()
    perturbed[3, y * side : (y + 1) * side] += torch.randn(side, 32, dtype=torch.float64)
    with torch.no_grad():
        delta = block._rowwise_multiview(perturbed, side) - block._rowwise_multiview(x, side)
    changed = delta.abs().view(2 * VIEWS, side, side, 32).amax(dim=(2, 3)) > 1e-9  # (rows, y)
    expected = torch.zeros_like(changed)
    expected[:BODY, y] = True  # row y of every normal-domain body view; not the face, not colour
    assert torch.equal(changed, expected)


# ------------------------------------------------------------------------------------------------
# The whole UNet: views and domains are mixed, and nothing can turn that off silently


def changed_rows(model, inputs, row, scale=1.0):
    base = run(model, inputs)
    perturbed = {**inputs, "sample": inputs["sample"].clone()}
    perturbed["sample"][row] += scale * torch.randn_like(perturbed["sample"][row])
    return (run(model, perturbed) - base).abs().flatten(1).amax(dim=1)


def test_unet_mixes_views_and_domains(tiny):
    inputs = tiny_inputs(objects=2, side=8)
    delta = changed_rows(tiny, inputs, row=3)  # object 0, normal domain, body view 3
    normal0, normal1 = delta[0:7], delta[7:14]
    colour0, colour1 = delta[14:21], delta[21:28]
    assert (normal0[:BODY] > 1e-4).all()  # every body view of the object (row-wise attention)
    assert (colour0[:BODY] > 1e-4).all()  # the colour twin, then its views (joint attention)
    assert normal0[BODY] == 0 and colour0[BODY] == 0  # body views never reach the face views
    assert (normal1 == 0).all() and (colour1 == 0).all()  # other objects never


def test_unet_without_multiview_weights_is_per_view(tiny):
    """Control: with attn_mv zeroed and no joint domains nor face fusion, views are independent
    (so the test above really measures the multi-view attentions)."""
    per_view = MultiViewUNet.tiny(joint_domain_attention=False, face_fusion=False).eval()
    per_view.load_state_dict(tiny.state_dict())
    for module in per_view.modules():
        if isinstance(module, MultiViewTransformerBlock):
            torch.nn.init.zeros_(module.attn_mv.to_out[0].weight)
            torch.nn.init.zeros_(module.attn_mv.to_out[0].bias)
    delta = changed_rows(per_view, tiny_inputs(side=8), row=3)
    assert delta[3] > 1e-4 and (delta[torch.arange(14) != 3] == 0).all()


def test_multiview_processor_cannot_be_replaced(tiny):
    with pytest.raises(TypeError, match="row-wise multi-view"):
        tiny.set_attn_processor(AttnProcessor2_0())
    processors = tiny.attn_processors  # setting the current processors back is allowed
    tiny.set_attn_processor(processors)


def test_face_fusion_flag(tiny):
    inputs = tiny_inputs(side=8)
    face_normal = VIEWS - 1
    assert changed_rows(tiny, inputs, row=face_normal)[0] > 1e-4  # face -> front
    no_fusion = MultiViewUNet.tiny(face_fusion=False).eval()
    no_fusion.load_state_dict(tiny.state_dict())
    delta = changed_rows(no_fusion, inputs, row=face_normal)
    assert (delta[:BODY] == 0).all() and delta[face_normal] > 1e-4
    assert delta[VIEWS + face_normal] > 1e-4  # its colour twin still (joint attention)


def test_batch_layout_is_checked(tiny):
    inputs = tiny_inputs(side=8)
    inputs = {
        **inputs,
        "sample": inputs["sample"][:10],
        "class_labels": inputs["class_labels"][:10],
        "encoder_hidden_states": inputs["encoder_hidden_states"][:10],
    }
    with pytest.raises(ValueError, match="multiple of 14"):
        run(tiny, inputs)


def test_nan_raises_instead_of_exit(tiny):
    broken = MultiViewUNet.tiny().eval()
    broken.load_state_dict(tiny.state_dict())
    with torch.no_grad():
        broken.conv_out.bias[0] = float("nan")
    with pytest.raises(FloatingPointError, match="NaN"):
        run(broken, tiny_inputs(side=8))


def test_latent_32_runs(tiny):
    out = run(tiny, tiny_inputs(side=32))
    assert out.shape == (14, 4, 32, 32) and torch.isfinite(out).all()


# ------------------------------------------------------------------------------------------------
# Gradient checkpointing: non-reentrant, so LoRA-style parameters inside blocks still learn


def lora_like_grads(model, checkpointing: bool) -> tuple[torch.Tensor, int]:
    model.train()
    if checkpointing:
        model.enable_gradient_checkpointing()
    else:
        model.disable_gradient_checkpointing()
    calls = 0

    def count(*_):
        nonlocal calls
        calls += 1

    trained = [
        m.attn_mv.to_q.weight for m in model.modules() if isinstance(m, MultiViewTransformerBlock)
    ]
    for p in model.parameters():
        p.requires_grad_(False)
    for p in trained:
        p.requires_grad_(True)
        p.grad = None
    hooks = [
        m.register_forward_pre_hook(count)
        for m in model.modules()
        if isinstance(m, MultiViewTransformerBlock)
    ]
    inputs = tiny_inputs(side=8)  # the input itself does not require grad
    model(**inputs).sample.square().mean().backward()
    for hook in hooks:
        hook.remove()
    model.disable_gradient_checkpointing()
    model.eval()
    for p in model.parameters():
        p.requires_grad_(True)
    return torch.cat([p.grad.flatten() for p in trained]), calls


def test_gradient_checkpointing_is_active_and_non_reentrant(tiny):
    blocks = sum(isinstance(m, MultiViewTransformerBlock) for m in tiny.modules())
    plain, plain_calls = lora_like_grads(tiny, checkpointing=False)
    checkpointed, ckpt_calls = lora_like_grads(tiny, checkpointing=True)
    assert plain_calls == blocks
    assert ckpt_calls == 2 * blocks  # every block re-entered in backward: checkpointing ran
    assert plain.abs().sum() > 0
    torch.testing.assert_close(checkpointed, plain, rtol=1e-5, atol=1e-7)


def test_from_pshuman_reads_sharded_safetensors(tiny, tmp_path):
    write_checkpoint(tmp_path, {}, "safetensors", "epsilon")
    unet_dir = tmp_path / "unet"
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    names = list(tiny.state_dict())
    shards = {"a.safetensors": names[: len(names) // 2], "b.safetensors": names[len(names) // 2 :]}
    state_dict = tiny.state_dict()
    for shard, keys in shards.items():
        save_file({k: state_dict[k].contiguous() for k in keys}, unet_dir / shard)
    index = {"weight_map": {k: shard for shard, keys in shards.items() for k in keys}}
    (unet_dir / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(index))
    loaded = MultiViewUNet.from_pshuman(tmp_path)
    for name, t in loaded.state_dict().items():
        assert torch.equal(t, state_dict[name])


def test_pshuman_config_round_trip():
    reference = pshuman_config()
    with torch.device("meta"):
        model = MultiViewUNet.from_pshuman_config(reference)
    written = configs.to_pshuman_config(dict(model.config))
    assert {key: reference[key] for key in written} == written


def test_save_pshuman_then_from_pshuman(tiny, tmp_path):
    tiny.save_pshuman(tmp_path)
    with pytest.warns(UserWarning, match="PSHUMAN_SCHEDULER"):  # no scheduler config
        MultiViewUNet.from_pshuman(tmp_path)
    loaded = MultiViewUNet.from_pshuman(tmp_path, prediction_type="epsilon")

    def as_json(config):  # tuples -> lists; no bookkeeping keys (_class_name, ...)
        return json.loads(json.dumps({k: v for k, v in config.items() if not k.startswith("_")}))

    assert as_json(loaded.config) == as_json({**tiny.config, "prediction_type": "epsilon"})
    for name, t in loaded.state_dict().items():
        assert torch.equal(t, tiny.state_dict()[name])
