"""``python -m drpose.data``: build, validate and look at DrPose15K datasets.

    python -m drpose.data build --motion PATH [PATH ...] --out DIR --anchors N --neighbours K
        --synth render|diffusers [--resolution R] [--shard i/n] [...]
    python -m drpose.data validate DIR        # exit status 0 only for a sound, complete dataset
    python -m drpose.data sheet DIR [--out PNG]
    python -m drpose.data renders --out DIR [--resolution R] [--num-poses N]
        [--scans DIR [--fits DIR] | --mesh FILE]   # multi-view renders for vae/pretrain/skel

Motion paths: ``.bvh`` (fitted with SMPL-X), ``.npz`` (AMASS, or a saved PoseSequence), ``.npy``
(Motion-X smplx_322) or ``default`` (the packaged CMU sample). See :mod:`drpose.data.dataset`
for the format and :mod:`drpose.data.build` for resuming and ``--shard``.
"""

from __future__ import annotations

from drpose._cli import UsageError, apply_openmp_wait_policy, command

if __name__ == "__main__":  # decided before torch loads OpenMP
    apply_openmp_wait_policy()

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m drpose.data", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    build = commands.add_parser("build", help="build (or resume) a dataset")
    build.add_argument("--motion", nargs="+", required=True, metavar="PATH",
                       help="motion files (.bvh, .npz, .npy) or 'default'")
    build.add_argument("--out", required=True, type=Path, help="dataset folder")
    build.add_argument("--anchors", type=int, required=True, help="FPS anchors N")
    build.add_argument("--neighbours", type=int, required=True, help="temporal neighbours k")
    build.add_argument("--synth", choices=("render", "diffusers"), default="render")
    build.add_argument("--resolution", type=int, default=768, help="image side (pixels)")
    build.add_argument("--shard", default="0/1", help="build shards s with s %% n == i (i/n)")
    build.add_argument("--stride", type=int, default=1, help="frames between window frames")
    build.add_argument("--windows-per-shard", type=int, default=8)
    build.add_argument("--seed", type=int, default=0)
    build.add_argument("--smplx-dir", type=Path, help="SMPL-X model folder (default: "
                       "$DRPOSE_SMPLX_DIR or the stand-in)")
    build.add_argument("--model", type=Path, help="diffusers: local ControlNet pipeline folder")
    build.add_argument("--condition", choices=("skeleton", "normals"), default="skeleton",
                       help="diffusers: what the ControlNet sees")
    build.add_argument("--steps", type=int, default=25, help="diffusers: denoising steps")
    build.add_argument("--guidance-scale", type=float, default=7.5, help="diffusers")
    build.add_argument("--prompt", default=None, help="diffusers: text prompt")
    build.add_argument("--portrait", nargs="+", default=(), metavar="IMAGE",
                       help="reference portraits (window w uses portrait w mod count)")
    build.add_argument("--no-progress", action="store_true")
    validate = commands.add_parser("validate", help="check a dataset (exit 0 if sound)")
    validate.add_argument("dir", type=Path)
    validate.add_argument("--no-hashes", action="store_true", help="skip SHA-256 checks")
    sheet = commands.add_parser("sheet", help="contact sheet PNG with skeletons drawn over")
    sheet.add_argument("dir", type=Path)
    sheet.add_argument("--out", type=Path, default=None, help="default DIR/contact_sheet.png")
    sheet.add_argument("--count", type=int, default=16)
    renders = commands.add_parser(
        "renders", help="multi-view renders (SMPL-X bodies or scans) for the vae, pretrain and "
        "skel stages; see drpose.data.multiview")
    renders.add_argument("--out", required=True, type=Path, help="render folder")
    renders.add_argument("--resolution", type=int, default=64, help="image side (pixels)")
    renders.add_argument("--num-poses", type=int, default=96,
                         help="samples (SMPL-X bodies, or poses of --mesh)")
    renders.add_argument("--held-out", type=int, default=6,
                         help="every k-th sample is held out for evaluation")
    renders.add_argument("--motion", default=None, help="pose file (default: the CMU sample)")
    renders.add_argument("--scans", default=None,
                         help="THuman2.1-layout folder (NNNN/NNNN.obj + smplx_param.*)")
    renders.add_argument("--fits", default=None, help="folder of NNNN/smplx_param.* when the "
                         "fits are not beside the scans")
    renders.add_argument("--mesh", default=None,
                         help="one textured mesh (.obj, .dae, .zae), posed by a fitted SMPL-X")
    renders.add_argument("--fit-steps", type=int, default=300,
                         help="--mesh: chamfer steps of the SMPL-X fit")
    renders.add_argument("--seed", type=int, default=0)
    renders.add_argument("--smplx-dir", default=None, help="SMPL-X model folder (default: "
                         "$DRPOSE_SMPLX_DIR or the stand-in)")
    return parser


def _build(args: argparse.Namespace) -> int:
    from drpose.data.build import BuildConfig, DatasetBuilder, parse_shard
    from drpose.data.synth import make_synthesizer

    shard = parse_shard(args.shard)
    options = {}
    if args.synth == "diffusers":
        options = {"condition": args.condition, "steps": args.steps,
                   "guidance_scale": args.guidance_scale}
        if args.prompt is not None:
            options["prompt"] = args.prompt
    synth = make_synthesizer(args.synth, args.resolution, model_dir=args.model,
                             smplx_dir=args.smplx_dir, **options)
    config = BuildConfig(motions=tuple(args.motion), out=args.out, anchors=args.anchors,
                         neighbours=args.neighbours, stride=args.stride,
                         windows_per_shard=args.windows_per_shard, seed=args.seed,
                         portraits=tuple(args.portrait))
    result = DatasetBuilder(config, synth).build(shard, progress=not args.no_progress)
    state = "complete" if result.complete else "incomplete (other shards pending)"
    print(f"{args.out}: built {len(result.built)} shards, {len(result.skipped)} already "
          f"finished; dataset {state}")
    return 0


def _validate(args: argparse.Namespace) -> int:
    from drpose.data.dataset import validate

    report = validate(args.dir, check_hashes=not args.no_hashes)
    for note in report.notes:
        print(f"note: {note}")
    for problem in report.problems:
        print(f"error: {problem}")
    verdict = "OK" if report.ok else f"INVALID ({len(report.problems)} problems)"
    print(f"{args.dir}: {report.shards} shards, {report.samples} samples checked: {verdict}")
    return 0 if report.ok else 1


def _sheet(args: argparse.Namespace) -> int:
    from drpose.data.dataset import write_contact_sheet

    if not args.dir.is_dir():
        raise UsageError(f"{args.dir}: no such dataset folder; pass a folder made by "
                         "`python -m drpose.data build`")
    print(write_contact_sheet(args.dir, args.out, count=args.count))
    return 0


def _renders(args: argparse.Namespace) -> int:
    from drpose.data.multiview import META_FILE, RenderConfig, load_or_build

    config = RenderConfig(num_poses=args.num_poses, resolution=args.resolution,
                          held_out=args.held_out, seed=args.seed, model_dir=args.smplx_dir,
                          motion=args.motion, scans=args.scans, fits=args.fits, mesh=args.mesh,
                          fit_steps=args.fit_steps)
    if (args.out / META_FILE).is_file() and load_or_build(args.out).config != config:
        raise UsageError(f"{args.out} holds renders made with another config; choose another "
                         "--out or delete the folder")
    data = load_or_build(args.out, config)
    print(f"{args.out}: {len(data)} samples at {args.resolution} px "
          f"({len(data.subset('eval'))} held out)")
    return 0


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    return {"build": _build, "validate": _validate, "sheet": _sheet,
            "renders": _renders}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
