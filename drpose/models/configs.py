"""Configurations of :class:`drpose.models.MultiViewUNet`: PSHuman's, tiny ones, and the
translation of PSHuman's ``unet/config.json`` into ours.

PSHuman (github pengHTYX/PSHuman, class ``UNetMV2DConditionModel``) stores a diffusers-style
config whose block types name its own multi-view blocks (``CrossAttnDownBlockMV2D`` ...). Our model
is a stock diffusers ``UNet2DConditionModel`` whose 16 transformer blocks are replaced by
:class:`drpose.models.attention_processors.MultiViewTransformerBlock`, so the translation maps the
block types back to diffusers' names, turns ``num_views`` (6 body views + 1 face view) into
``num_body_views`` / ``face_view`` and rejects the options PSHuman's released model does not use
(regression heads, DINO features, other attention blocks) instead of silently ignoring them.
"""

from __future__ import annotations

import warnings
from typing import Any

# PSHuman block type -> the diffusers block it wraps (same weights, multi-view transformer blocks).
# Our names map back to PSHuman's one to one (PSHuman's plain DownBlock2D/UpBlock2D are diffusers').
PSHUMAN_BLOCK_TYPES: dict[str, str] = {
    "CrossAttnDownBlockMV2D": "CrossAttnDownBlock2D",
    "CrossAttnUpBlockMV2D": "CrossAttnUpBlock2D",
    "UNetMidBlockMV2DCrossAttn": "UNetMidBlock2DCrossAttn",
    "DownBlock2D": "DownBlock2D",
    "UpBlock2D": "UpBlock2D",
}

# PSHuman config keys copied unchanged into MultiViewUNet's config.
PSHUMAN_COPIED_KEYS: tuple[str, ...] = (
    "sample_size",
    "in_channels",
    "out_channels",
    "block_out_channels",
    "layers_per_block",
    "attention_head_dim",
    "cross_attention_dim",
    "norm_num_groups",
    "norm_eps",
    "act_fn",
    "flip_sin_to_cos",
    "freq_shift",
    "downsample_padding",
    "mid_block_scale_factor",
    "use_linear_projection",
    "upcast_attention",
    "class_embed_type",
    "projection_class_embeddings_input_dim",
    "resnet_time_scale_shift",
)

# PSHuman keys whose value must be exactly this for our architecture to be theirs.
PSHUMAN_REQUIRED_VALUES: dict[str, Any] = {
    "multiview_attention": True,
    "selfattn_block": "self_rowwise",
    "cd_attention_last": False,
    "cd_attention_mid": False,
    "regress_elevation": False,
    "regress_focal_length": False,
    "use_dino": False,
    "addition_downsample": False,
    "addition_embed_type": None,
    "center_input_sample": False,
    "class_embeddings_concat": False,
    "conv_in_kernel": 3,
    "conv_out_kernel": 3,
    "dual_cross_attention": False,
    "encoder_hid_dim": None,
    "encoder_hid_dim_type": None,
    "num_attention_heads": None,
    "num_class_embeds": None,
    "only_cross_attention": False,
    "mid_block_only_cross_attention": None,
    "cross_attention_norm": None,
    "resnet_out_scale_factor": 1.0,
    "resnet_skip_time_act": False,
    "time_cond_proj_dim": None,
    "time_embedding_act_fn": None,
    "time_embedding_dim": None,
    "time_embedding_type": "positional",
    "timestep_post_act": None,
    "transformer_layers_per_block": 1,
}

# PSHuman keys that create no weights and change nothing at inference (documented in
# ../shared/reference/pshuman_unet_config.json), plus EMA bookkeeping keys.
PSHUMAN_IGNORED_KEYS: frozenset[str] = frozenset(
    {
        "addition_channels",
        "addition_embed_type_num_heads",
        "addition_time_embed_dim",
        "num_regress_blocks",
        "projection_camera_embeddings_input_dim",
        "sparse_mv_attention",
        "decay",
        "inv_gamma",
        "min_decay",
        "optimization_step",
        "power",
        "update_after_step",
        "use_ema_warmup",
    }
)

# PSHuman's released model: the values MultiViewUNet's constructor defaults to.
PSHUMAN: dict[str, Any] = {
    "sample_size": 96,
    "in_channels": 8,
    "out_channels": 4,
    "down_block_types": (
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "CrossAttnDownBlock2D",
        "DownBlock2D",
    ),
    "mid_block_type": "UNetMidBlock2DCrossAttn",
    "up_block_types": (
        "UpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
        "CrossAttnUpBlock2D",
    ),
    "block_out_channels": (320, 640, 1280, 1280),
    "layers_per_block": 2,
    "attention_head_dim": (5, 10, 20, 20),
    "cross_attention_dim": 1024,
    "norm_num_groups": 32,
    "norm_eps": 1e-5,
    "act_fn": "silu",
    "flip_sin_to_cos": True,
    "freq_shift": 0,
    "downsample_padding": 1,
    "mid_block_scale_factor": 1.0,
    "use_linear_projection": True,
    "upcast_attention": True,
    "class_embed_type": "projection",
    "projection_class_embeddings_input_dim": 2048,
    "resnet_time_scale_shift": "default",
    "num_body_views": 6,
    "face_view": True,
    "face_fusion": True,
    "joint_domain_attention": True,
    "prediction_type": None,
}

# PSHuman's denoising scheduler when a checkpoint folder has no ``scheduler/scheduler_config.json``
# (../shared/reference/pshuman_scheduler_and_pipeline.json, ``full_config_candidate_A``): PSHuman
# saves ``DDIMScheduler.from_pretrained_linear(SD 2.1 unCLIP, subfolder="scheduler")``, which its
# author describes as SD 2.1 unCLIP's scheduler config with the betas switched to "linear"; that
# config predicts ``v_prediction``. The checkpoint's own file, when present, always wins (its
# ``prediction_type`` cannot be derived from PSHuman's code). Only DDIM's keys (not PNDM's
# ``skip_prk_steps``).
PSHUMAN_SCHEDULER: dict[str, Any] = {
    "num_train_timesteps": 1000,
    "beta_start": 0.00085,
    "beta_end": 0.012,
    "beta_schedule": "linear",
    "trained_betas": None,
    "clip_sample": False,
    "set_alpha_to_one": False,
    "steps_offset": 1,
    "prediction_type": "v_prediction",
    "thresholding": False,
    "dynamic_thresholding_ratio": 0.995,
    "clip_sample_range": 1.0,
    "sample_max_value": 1.0,
    "timestep_spacing": "leading",
    "rescale_betas_zero_snr": False,
}

# A few-million-parameter model of the same family (3 resolution levels, transformer blocks at
# the two finest levels and in the middle, unCLIP projection class embedding): latents 4x16x16
# (or 4x32x32), 8 input channels, context dim 32, class labels of 64 = 2 x a 32-d image embedding.
TINY: dict[str, Any] = {
    **PSHUMAN,
    "sample_size": 16,
    "down_block_types": ("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
    "block_out_channels": (32, 64, 96),
    "layers_per_block": 1,
    "attention_head_dim": (2, 4, 6),
    "cross_attention_dim": 32,
    "norm_num_groups": 16,
    "projection_class_embeddings_input_dim": 64,
}


def from_pshuman_config(config: dict[str, Any]) -> dict[str, Any]:
    """Translate PSHuman's ``unet/config.json`` (a dict) into ``MultiViewUNet`` keyword arguments.

    Raises ValueError naming the keys when the config describes something PSHuman's released
    model is not (block types we cannot map, regression heads, DINO, other attention blocks);
    keys we do not know are reported with a warning and otherwise ignored.
    """
    unsupported = {
        key: config[key]
        for key, required in PSHUMAN_REQUIRED_VALUES.items()
        if key in config and _normalised(config[key]) != _normalised(required)
    }
    if unsupported:
        raise ValueError(
            "MultiViewUNet.from_pshuman_config: these PSHuman config values describe an "
            f"architecture MultiViewUNet does not build: {unsupported}; expected "
            f"{ {key: PSHUMAN_REQUIRED_VALUES[key] for key in unsupported} }"
        )
    known = (
        set(PSHUMAN_COPIED_KEYS)
        | set(PSHUMAN_REQUIRED_VALUES)
        | PSHUMAN_IGNORED_KEYS
        | {"down_block_types", "mid_block_type", "up_block_types", "num_views", "mvcd_attention"}
    )
    unknown = sorted(key for key in config if key not in known and not key.startswith("_"))
    if unknown:
        warnings.warn(
            f"MultiViewUNet.from_pshuman_config: ignoring unknown PSHuman config keys {unknown}",
            UserWarning,
            stacklevel=3,
        )
    kwargs = {key: config[key] for key in PSHUMAN_COPIED_KEYS if key in config}
    for key in ("down_block_types", "up_block_types"):
        kwargs[key] = tuple(_diffusers_block_type(name) for name in config[key])
    kwargs["mid_block_type"] = _diffusers_block_type(config["mid_block_type"])
    num_views = int(config.get("num_views", 7))
    if num_views < 2:
        raise ValueError(
            f"PSHuman config num_views must be >= 2 (body views + face), got {num_views}"
        )
    # PSHuman: the last of num_views is the face view; it skips the row-wise attention and is
    # fused into the front view inside the joint attention (pshuman_attention.md sections 4, 5).
    kwargs["num_body_views"] = num_views - 1
    kwargs["face_view"] = True
    kwargs["face_fusion"] = True
    kwargs["joint_domain_attention"] = bool(config.get("mvcd_attention", True))
    return kwargs


def to_pshuman_config(config: dict[str, Any]) -> dict[str, Any]:
    """The inverse of :func:`from_pshuman_config`: a ``MultiViewUNet`` config (dict) as PSHuman's
    ``unet/config.json`` (the keys that define the architecture; PSHuman's other keys are left
    to its defaults). Only PSHuman's layout (a face view, fused) can be written."""
    if not (config["face_view"] and config["face_fusion"]):
        raise ValueError("PSHuman's format needs face_view=True and face_fusion=True")
    pshuman_names = {ours: theirs for theirs, ours in PSHUMAN_BLOCK_TYPES.items()}
    out: dict[str, Any] = {"_class_name": "UNetMV2DConditionModel", **PSHUMAN_REQUIRED_VALUES}
    out.update({key: _json_value(config[key]) for key in PSHUMAN_COPIED_KEYS})
    for key in ("down_block_types", "up_block_types"):
        out[key] = [pshuman_names[name] for name in config[key]]
    out["mid_block_type"] = pshuman_names[config["mid_block_type"]]
    out["num_views"] = config["num_body_views"] + 1
    out["mvcd_attention"] = config["joint_domain_attention"]
    return out


def _json_value(value: Any) -> Any:
    return list(value) if isinstance(value, tuple) else value


def _diffusers_block_type(name: str) -> str:
    if name not in PSHUMAN_BLOCK_TYPES:
        raise ValueError(
            f"PSHuman config block type {name!r} is not one MultiViewUNet can build; known: "
            f"{sorted(PSHUMAN_BLOCK_TYPES)}"
        )
    return PSHUMAN_BLOCK_TYPES[name]


def _normalised(value: Any) -> Any:
    """Compare config values across int/float and list/tuple spellings (JSON has no tuples)."""
    if isinstance(value, list | tuple):
        return tuple(_normalised(v) for v in value)
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    return float(value)
