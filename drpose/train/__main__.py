"""``python -m drpose.train [STAGE] [--config FILE] [--resume | --overwrite] [--FIELD VALUE ...]``

Stages (each a module with a ``Config`` dataclass and ``run(config, resume=...)``):

* ``reward`` (the default, and the main job): DrPose reward fine-tuning. With no arguments it
  runs the embedded default on this machine: it builds and caches what is missing (stand-in
  SMPL-X body, default poses and renders, a tiny VAE, the pretrained tiny multi-view model and
  g_skel), fine-tunes for a few minutes and writes ``runs/drpose/metrics.json`` with
  ``posescore_before`` / ``posescore_after`` on held-out poses, plus before/after grids.
* ``vae``, ``pretrain``, ``skel``: the stages before it (issue 6).

Every config field is a flag (nested ones dotted: ``--train.steps 200``); ``--config`` reads a
JSON file of the same shape first. Real work: point ``--pipeline`` at a local PSHuman-format
pipeline folder, ``--skel`` at a trained g_skel and ``--data`` at a DrPose15K folder.

A mistake (a bad value, a missing file, a run folder that already holds a run) ends the command
with one line ``error: ...`` before any work; ``--debug`` shows the traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from drpose._cli import UsageError, apply_openmp_wait_policy, command

if __name__ == "__main__":  # decided before torch loads OpenMP; a policy the user set is kept
    apply_openmp_wait_policy()

from drpose.train import cli, engine  # torch loads after the environment is set

STAGES = {
    "reward": "drpose.train.reward",
    "vae": "drpose.train.vae",
    "pretrain": "drpose.train.pretrain",
    "skel": "drpose.train.skel",
}


@command
def main(argv: Sequence[str] | None = None) -> int:
    argv = list(argv or [])
    stage = argv.pop(0) if argv and not argv[0].startswith("-") else "reward"
    if stage not in STAGES:
        print(f"unknown stage {stage!r}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    module = importlib.import_module(STAGES[stage])
    parser = argparse.ArgumentParser(prog=f"python -m drpose.train {stage}",
                                     description=(module.__doc__ or "").strip().splitlines()[0])
    parser.add_argument("--config", help="JSON file with config values (flags override it)")
    parser.add_argument("--resume", action="store_true",
                        help="continue the run in runs/<name> from its latest checkpoint")
    parser.add_argument("--overwrite", action="store_true",
                        help="delete the run already in runs/<name> first, and start afresh")
    parser.add_argument("--device", dest="train.device", default=argparse.SUPPRESS,
                        help="cpu, cuda, cuda:1, ... (= --train.device; default: CUDA when "
                        "there is a GPU)")
    cli.add_arguments(parser, module.Config)
    args = parser.parse_args(argv)
    options = vars(args)
    config_file = options.pop("config")
    resume = options.pop("resume")
    overwrite = options.pop("overwrite")
    if resume and overwrite:
        raise UsageError("--resume continues the run, --overwrite deletes it: pass one")
    config = cli.build(module.Config, args, config_file)
    if overwrite:
        engine.clear_run(config.train.run_dir)
    module.run(config, resume=resume)
    return 0


if __name__ == "__main__":
    sys.exit(main())
