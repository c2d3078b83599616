"""Each training sample's condition encodings, computed once (``--cache_conditions true``).

A reward step conditions the UNet on the sample's input image: its VAE latents and CLIP image
embedding (:meth:`drpose.pipelines.MultiViewPipeline.encode_images`), the same every time the
sample is drawn. A :class:`ConditionCache` computes them once for every training sample and
keeps them on disk as float32 ``.npy`` files read by memory map (a row per sample, ``n`` = 1
condition image, 2 with a face view):

* ``latents.npy`` ``(N, n, 4, h, w)``: at 768² (96² latents) with a face view 295 KB per sample,
  4.4 GB for DrPose15K's 15,000;
* ``embeds.npy`` ``(N, n, E)``: 8 KB per sample (E = 1024);
* ``meta.json``, written last: the fingerprints of the VAE and image encoder, the samples' count
  and a hash of their joints. A cache whose ``meta.json`` does not match is built again.

float32 holds the encoders' bf16 / fp16 outputs exactly, and
:meth:`~drpose.pipelines.MultiViewPipeline.encode_condition` casts them back to the encoders'
dtypes, so a cached step computes what an uncached one does (the embedding's noise
augmentation still draws from the step's generator).
:class:`CachedPairs` serves these encodings in place of the images.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import torch
from torch import Tensor
from torch.utils.data import DataLoader

from drpose._progress import progress
from drpose.data.stream import PosePairs, inputs_on
from drpose.models.fingerprint import weights_fingerprint
from drpose.pipelines.multiview import MultiViewPipeline

ARRAY_FILES = {"latents": "latents.npy", "embeds": "embeds.npy"}
META_FILE = "meta.json"


def cache_key(pipe: MultiViewPipeline, pairs: PosePairs) -> dict[str, object]:
    """What a cache's encodings depend on: the encoders' weights, the face view, the samples."""
    joints = pairs.joints.contiguous().numpy().tobytes()
    return {"vae": weights_fingerprint(pipe.vae),
            "image_encoder": weights_fingerprint(pipe.image_encoder),
            "face_view": bool(pipe.unet.config.face_view), "samples": len(pairs),
            "joints_sha256": hashlib.sha256(joints).hexdigest()[:16]}


class ConditionCache:
    """The encodings of a cache folder (module docstring), memory-mapped."""

    def __init__(self, folder: str | Path) -> None:
        self.folder = Path(folder)
        self.latents, self.embeds = (np.load(self.folder / ARRAY_FILES[name], mmap_mode="r")
                                     for name in ("latents", "embeds"))

    def __len__(self) -> int:
        return self.latents.shape[0]

    def inputs(self, i: int) -> tuple[Tensor, Tensor]:
        """Sample ``i``'s (latents ``(n, 4, h, w)``, embeds ``(n, E)``), float32 copies."""
        return (torch.from_numpy(np.array(self.latents[i])),
                torch.from_numpy(np.array(self.embeds[i])))

    @classmethod
    @torch.no_grad()
    def build(cls, pipe: MultiViewPipeline, pairs: PosePairs, folder: str | Path, *,
              batch_size: int = 8, workers: int = 0, show_progress: bool = True
              ) -> ConditionCache:
        """The cache of ``pairs`` under ``pipe``'s encoders in ``folder``: read when its
        ``meta.json`` matches, else computed (``batch_size`` images at a time on the pipeline's
        device, read by a DataLoader with ``workers`` processes) and written."""
        folder = Path(folder)
        key = cache_key(pipe, pairs)
        meta = folder / META_FILE
        if meta.is_file() and json.loads(meta.read_text()) == key:
            return cls(folder)
        folder.mkdir(parents=True, exist_ok=True)
        meta.unlink(missing_ok=True)
        loader = DataLoader(pairs, batch_size=batch_size, num_workers=workers,
                            pin_memory=pipe.device.type == "cuda")
        files = {}
        done = 0
        bar = progress(loader, enabled=show_progress, desc="condition cache", unit="batch")
        for images, _, rows in bar:
            encoded = pipe.encode_images(inputs_on(images, pipe.device))
            for name, values in (("latents", encoded.latents), ("embeds", encoded.embeds)):
                if name not in files:
                    files[name] = np.lib.format.open_memmap(
                        folder / f".{ARRAY_FILES[name]}.tmp", mode="w+", dtype=np.float32,
                        shape=(len(pairs), *values.shape[1:]))
                files[name][rows.numpy()] = values.float().cpu().numpy()
            done += len(rows)
        if done != len(pairs) or not files:
            raise RuntimeError(f"condition cache {folder}: encoded {done} of {len(pairs)} samples")
        for name, array in files.items():
            array.flush()
            (folder / f".{ARRAY_FILES[name]}.tmp").replace(folder / ARRAY_FILES[name])
        files.clear()  # closes the memory maps
        meta.write_text(json.dumps(key, indent=1))
        return cls(folder)


class CachedPairs(PosePairs):
    """``pairs`` whose item ``i`` gives sample ``i``'s cached encodings ``(latents, embeds)``
    instead of its image (the joints are ``pairs``')."""

    def __init__(self, pairs: PosePairs, cache: ConditionCache) -> None:
        if len(cache) != len(pairs):
            raise ValueError(f"condition cache {cache.folder} holds {len(cache)} samples, the "
                             f"pairs are {len(pairs)}")
        super().__init__(pairs.joints)
        self.cache = cache

    def image(self, i: int) -> tuple[Tensor, Tensor]:
        return self.cache.inputs(i)
