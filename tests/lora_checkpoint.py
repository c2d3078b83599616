"""A LoRA checkpoint as ``drpose.train`` writes one, for the tests that load them."""

from __future__ import annotations

from pathlib import Path

import torch
from peft import LoraConfig
from safetensors.torch import save_file

from drpose.pipelines import MultiViewPipeline


def write_lora_checkpoint(folder: Path, *, seed: int = 0, rank: int = 4) -> MultiViewPipeline:
    """Write ``folder/trainable.safetensors`` (the adapted UNet's LoRA parameters by name) for
    ``MultiViewPipeline.tiny(seed)``, with non-zero ``lora_B`` (peft starts B at 0, which would
    make the adapter a no-op); returns the adapted pipeline."""
    trained = MultiViewPipeline.tiny(seed=seed)
    trained.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, init_lora_weights="gaussian",
                                        target_modules=["to_q", "to_k", "to_v", "to_out.0"]))
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, param in trained.unet.named_parameters():
            if "lora_B" in name:
                param.copy_(torch.randn(param.shape, generator=generator) * 0.1)
    state = {n: p.detach().contiguous() for n, p in trained.unet.named_parameters()
             if "lora_" in n}
    folder.mkdir(parents=True, exist_ok=True)
    save_file(state, folder / "trainable.safetensors")
    return trained
