"""Where the project's default pretrained pipeline lives, for the code that builds it
(:mod:`drpose.train.pretrain`) and the code that only reads it (:mod:`drpose.infer`,
:mod:`drpose.eval`), so that inference and evaluation never import training.

Layout: ``<drpose cache>/default/`` holds the default chain; the pretrain run writes its
pipeline to ``<that>/pretrain/pipeline/`` and marks it finished with ``done.json``.
"""

from __future__ import annotations

from pathlib import Path

from drpose.body.model import cache_dir

DEFAULT_CHAIN = "default"  # subfolder of drpose's cache holding the default chain
PRETRAIN_RUN_NAME = "pretrain"  # run name of the pretrain stage
PIPELINE_SUBFOLDER = "pipeline"  # the saved pipeline inside a pretrain run folder
DONE_FILE = "done.json"  # written last into a finished stage's output folder


def default_chain_dir() -> Path:
    """``<drpose cache>/default``: where ``python -m drpose.train`` builds and caches the
    default chain (renders, VAE, pretrained pipeline, g_skel)."""
    return cache_dir() / DEFAULT_CHAIN


def default_pipeline_dir() -> Path | None:
    """The default pretrained pipeline folder when ``python -m drpose.train`` has built it, else
    None. Never builds it: that is training."""
    folder = default_chain_dir() / PRETRAIN_RUN_NAME / PIPELINE_SUBFOLDER
    return folder if (folder / DONE_FILE).is_file() else None
