"""Session fixtures shared by the stage tests: tiny multi-view renders and a tiny trained VAE,
built once per test session under a temporary folder."""

from __future__ import annotations

import warnings
from pathlib import Path

import pytest

from drpose.data.multiview import RenderConfig, load_or_build
from drpose.train.engine import TrainConfig

# 32 px renders (latents 8 x 8 with the factor-4 VAE), 30 poses: 20 train, 10 held out.
TINY_RENDERS = RenderConfig(num_poses=30, resolution=32, held_out=3)
SKEL_STEPS = 250


def tiny_train(name: str, root: Path, steps: int, **options) -> TrainConfig:
    """A TrainConfig for a few quiet steps under ``root``."""
    return TrainConfig(name=name, runs_dir=str(root), steps=steps, progress=False,
                       checkpoint_every=steps, log_every=steps, **options)


@pytest.fixture(scope="session")
def tiny_renders(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("stages") / "renders"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the stand-in SMPL-X model warns once
        load_or_build(folder, TINY_RENDERS)
    return folder


@pytest.fixture(scope="session")
def tiny_vae(tiny_renders) -> Path:
    from drpose.train import vae

    config = vae.VAEConfig(train=tiny_train("vae", tiny_renders.parent, 30, lr=2e-3),
                           renders=str(tiny_renders))
    return vae.run(config)


@pytest.fixture(scope="session")
def tiny_skel(tiny_renders, tiny_vae) -> tuple[Path, dict]:
    """g_skel trained briefly on the tiny renders: (folder, metrics)."""
    import json

    from drpose.train import skel

    config = skel.SkelConfig(train=tiny_train("skel", tiny_renders.parent, SKEL_STEPS, lr=3e-3),
                             renders=str(tiny_renders), vae=str(tiny_vae), batch_size=4)
    folder = skel.run(config)
    return folder, json.loads((config.train.run_dir / "metrics.json").read_text())
