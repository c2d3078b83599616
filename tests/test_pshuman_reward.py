"""The reward stage end to end on the small PSHuman-shaped pipeline (PSHuman's structure: 7 views
x 2 domains, face view, v-prediction, unCLIP conditioning; narrow widths, 64 px), through the
command line a user runs: renders at the pipeline's side -> ``skel --pipeline`` -> reward."""

from __future__ import annotations

import json

import pytest

from drpose.data.multiview import RenderConfig, load_or_build
from drpose.pipelines.random_pshuman import write_random_pshuman
from drpose.train import pretrain
from drpose.train.__main__ import main as train_main


@pytest.fixture(scope="module")
def small_pshuman(tmp_path_factory):
    root = tmp_path_factory.mktemp("pshuman")
    write_random_pshuman(root / "pipeline", small=True)
    load_or_build(root / "renders", RenderConfig(num_poses=6, resolution=64, held_out=3))
    return root


def test_reward_stage_runs_on_the_small_pshuman_pipeline(small_pshuman, monkeypatch, capsys):
    root = small_pshuman
    pipeline, renders, runs = root / "pipeline", root / "renders", root / "runs"
    quiet = ["--train.progress", "false", "--train.runs_dir", str(runs), "--device", "cpu"]
    assert train_main(["skel", "--pipeline", str(pipeline), "--renders", str(renders),
                       "--train.steps", "2", *quiet]) == 0
    skel_dir = runs / "skel" / "skel"
    assert json.loads((skel_dir / "posescore.json").read_text())["vae_fingerprint"]
    monkeypatch.setattr(pretrain, "ensure_renders", lambda cache: renders)
    assert train_main(["--pipeline", str(pipeline), "--skel", str(skel_dir), "--train.steps",
                       "1", "--num_steps", "2", "--trained_steps", "1", "--early_stop", "0",
                       "--eval_samples", "1", "--image_every", "0", "--cache_dir",
                       str(root / "cache"), *quiet]) == 0
    metrics = json.loads((runs / "drpose" / "metrics.json").read_text())
    assert metrics["steps"] == 1 and metrics["devices"]["unet"] == "cpu"
    for key in ("posescore_before", "posescore_after", "posescore_true_views"):
        assert metrics[key] == metrics[key] and metrics[key] < 0, key  # finite, a real score
    assert (runs / "drpose" / "lora" / "trainable.safetensors").is_file()
    assert "PoseScore on 1 held-out poses" in capsys.readouterr().out
