"""``python -m drpose.eval build|run|experiment``: the MixamoRP-style benchmark
(drpose.eval.benchmark) and DrPose's experiment in miniature (drpose.eval.experiment).

build: ``--out DIR [--assets PATH ...] [--poses PATH ...] [--count N] [--resolution R]``.
run: ``--bench DIR --model [NAME=]PIPELINE[+LORA] [--model ...] [--out DIR]`` (PIPELINE: a
MultiViewPipeline folder, ``default`` (the pretrained tiny pipeline ``python -m drpose.train``
builds) or ``tiny`` (random init); LORA: a training run's ``lora`` folder). Base vs DrPose on the
default chain: ``--model base=default --model drpose=default+runs/drpose/lora``.
experiment: ``--out DIR [--quick] [--config FILE.json] [--FIELD VALUE ...]`` (every
``ExperimentConfig`` field is a flag, nested ones dotted: ``--split.hard 64``); a rerun reuses the
finished stages in DIR.
Exit codes: 0 done, 2 bad arguments or inputs.
"""

from __future__ import annotations

from drpose._cli import apply_niced_thread_limit, apply_openmp_wait_policy, command

if __name__ == "__main__":  # decided before torch loads OpenMP
    apply_openmp_wait_policy()
    apply_niced_thread_limit()

import argparse
import sys
from pathlib import Path

from drpose.eval import benchmark
from drpose.eval.metrics import ALIGNMENTS


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m drpose.eval", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build a benchmark folder")
    build.add_argument("--out", required=True, type=Path)
    build.add_argument("--assets", nargs="+", type=Path,
                       help="rigged glTF files or folders (default: the SMPL-X body)")
    build.add_argument("--poses", nargs="+", type=Path,
                       help="motion files: .npz/.npy SMPL-X, .bvh (default: bundled CMU clips)")
    build.add_argument("--count", type=int, default=benchmark.BuildConfig.count)
    build.add_argument("--resolution", type=int, default=benchmark.BuildConfig.resolution)
    build.add_argument("--seed", type=int, default=benchmark.BuildConfig.seed)
    build.add_argument("--hard-fraction", type=float, default=benchmark.BuildConfig.hard_fraction,
                       help="choose poses among this fraction farthest from the rest pose")
    run = commands.add_parser("run", help="reconstruct and score every case")
    run.add_argument("--bench", required=True, type=Path)
    run.add_argument("--model", required=True, action="append", type=benchmark.ModelSpec.parse,
                     help="[NAME=]PIPELINE[+LORA], PIPELINE a folder, 'default' or 'tiny'; "
                     "repeat for several models")
    run.add_argument("--out", type=Path, help="results folder (default: BENCH/results)")
    run.add_argument("--align", choices=ALIGNMENTS, default=benchmark.RunConfig.align)
    run.add_argument("--steps", type=int, default=benchmark.RunConfig.steps)
    run.add_argument("--guidance", type=float, default=benchmark.RunConfig.guidance)
    run.add_argument("--points", type=int, default=benchmark.RunConfig.n_points)
    run.add_argument("--normal-size", type=int, default=benchmark.RunConfig.normal_size)
    run.add_argument("--fit-iterations", type=int, help="SMPL-X fit steps (recon default)")
    run.add_argument("--carve-iterations", type=int, help="carving steps (recon default)")
    run.add_argument("--recon-resolution", type=int, help="carving view side (recon default)")
    run.add_argument("--device", help="where the views are generated: cpu, cuda, cuda:1, ... "
                     "(default: CUDA when there is a GPU)")
    for sub in (build, run):
        sub.add_argument("--no-progress", action="store_true", help="no progress bars")
    experiment = commands.add_parser("experiment", help="DrPose's experiment in miniature "
                                     "(cached per stage under --out)")
    experiment.add_argument("--out", required=True, type=Path)
    experiment.add_argument("--quick", action="store_true",
                            help="the test-sized variant (about two minutes)")
    experiment.add_argument("--config", help="JSON file with config values (flags override it)")
    from drpose.eval.experiment import ExperimentConfig
    from drpose.train import cli

    cli.add_arguments(experiment, ExperimentConfig)
    return parser.parse_args(argv)


def run_experiment(args: argparse.Namespace) -> int:
    from drpose.eval import experiment
    from drpose.train import cli

    options = vars(args)
    out, quick, config_file = options.pop("out"), options.pop("quick"), options.pop("config")
    options.pop("command")
    base = experiment.ExperimentConfig.quick() if quick else experiment.ExperimentConfig()
    config = cli.build(experiment.ExperimentConfig, args, config_file, base=base)
    experiment.run_experiment(config, out)
    print((out / "results.md").read_text())
    return 0


def recon_config(args: argparse.Namespace):
    from dataclasses import replace

    from drpose.recon import ReconConfig

    config = ReconConfig()
    if args.fit_iterations is not None:
        config = replace(config, fit=replace(config.fit, iterations=args.fit_iterations))
    if args.carve_iterations is not None:
        config = replace(config, carve=replace(config.carve, iterations=args.carve_iterations))
    if args.recon_resolution is not None:
        config = replace(config, resolution=args.recon_resolution)
    return config


@command
def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit status (2: bad arguments or inputs)."""
    args = parse_args(argv)
    if args.command == "experiment":
        return run_experiment(args)
    if args.command == "build":
        config = benchmark.BuildConfig(count=args.count, resolution=args.resolution,
                                       seed=args.seed, hard_fraction=args.hard_fraction)
        manifest = benchmark.build_benchmark(args.out, assets=args.assets, poses=args.poses,
                                             config=config, progress=not args.no_progress)
        print(f"{len(manifest['cases'])} cases in {args.out}")
        return 0
    names = [m.name for m in args.model]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must differ, got {names}; use NAME=PIPELINE")
    config = benchmark.RunConfig(align=args.align, steps=args.steps, guidance=args.guidance,
                                 n_points=args.points, normal_size=args.normal_size,
                                 device=args.device)
    benchmark.load_manifest(args.bench)
    recon = recon_config(args)
    models = {m.name: benchmark.pipeline_reconstructor(m, config, recon) for m in args.model}
    out = args.out or args.bench / "results"
    benchmark.run_benchmark(args.bench, models, out, config=config, progress=not args.no_progress)
    print((out / "results.md").read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
