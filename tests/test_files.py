"""Files the package writes are readable by others as the umask allows (not safetensors' 0600)."""

from __future__ import annotations

import os

import pytest
import torch

from drpose._files import save_safetensors


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def _modes(folder):
    return {p.relative_to(folder).as_posix(): oct(p.stat().st_mode & 0o777)
            for p in folder.rglob("*.safetensors")}


def test_save_safetensors_is_0644(tmp_path, umask_022):
    save_safetensors({"a": torch.zeros(3)}, tmp_path / "x.safetensors")
    assert _modes(tmp_path) == {"x.safetensors": "0o644"}


def test_saved_pipeline_weights_are_0644(tmp_path, umask_022):
    from drpose.pipelines import MultiViewPipeline

    MultiViewPipeline.tiny(seed=0).save_pretrained(tmp_path)
    modes = _modes(tmp_path)
    assert modes and set(modes.values()) == {"0o644"}, modes
