"""A fingerprint of a model's weights, to tie what was trained on a model to that model.

g_skel learns from one VAE's latents; its PoseScore of another VAE's latents means nothing.
The ``skel`` stage records the fingerprint of the VAE it learned from, and the reward stage
refuses a g_skel whose recorded VAE is not the pipeline's.
"""

from __future__ import annotations

import hashlib
import json

import torch
from torch import nn

# what a transformers config records of the saving library and the loaded dtype, not the model
RECORD_KEYS = frozenset({"transformers_version", "torch_dtype", "dtype"})


def weights_fingerprint(model: nn.Module) -> str:
    """16 hex digits of the SHA-256 of ``model``'s class, its config (a diffusers model's
    ``config`` without the keys that record where and by which version it was saved) and every
    parameter and buffer (name, shape and values in float32). Works for diffusers and
    transformers models alike.

    Equal for the same weights loaded from any folder onto any device in any dtype that holds
    them exactly; a different architecture, scaling factor or any changed weight changes it.
    """
    digest = hashlib.sha256(type(model).__name__.encode())
    config = getattr(model, "config", None)
    if config is not None:
        config = config.to_dict() if hasattr(config, "to_dict") else dict(config)  # transformers
        settings = {k: v for k, v in config.items()
                    if not k.startswith("_") and k not in RECORD_KEYS}
        digest.update(json.dumps(settings, sort_keys=True, default=str).encode())
    for name, tensor in (*model.named_parameters(), *model.named_buffers()):
        digest.update(f"{name}{tuple(tensor.shape)}".encode())
        values = tensor.detach().to("cpu", torch.float32).contiguous()
        digest.update(values.numpy().tobytes())
    return digest.hexdigest()[:16]
