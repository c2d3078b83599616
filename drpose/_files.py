"""Files the package writes get the permissions any other file gets: read-write for the owner,
readable by others as the umask allows (safetensors >= 0.8 writes 0600 files)."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from safetensors.torch import save_file


def save_safetensors(tensors: dict[str, torch.Tensor], path: str | Path) -> Path:
    """``safetensors.torch.save_file`` with the usual permissions (:func:`make_readable`)."""
    save_file(tensors, path)
    make_readable(path)
    return Path(path)


def make_readable(path: str | Path) -> None:
    """Give ``path`` (a file, or every ``*.safetensors`` file under a folder) mode
    ``0o666 & ~umask``, as ``open()`` would have."""
    path = Path(path)
    mask = os.umask(0)
    os.umask(mask)
    files = sorted(path.rglob("*.safetensors")) if path.is_dir() else [path]
    for file in files:
        file.chmod(0o666 & ~mask)
