"""Regenerate the packaged pose sample: ``python -m drpose.motion.make_sample``.

Fits SMPL-X to the first frames of CMU subject 1 clips 01 and 03 (Debian package
``assimp-testmodels``: ``/usr/share/assimp/models/BVH/``), 120 fps taken to 30 fps, and writes
one :class:`drpose.motion.sequence.PoseSequence` ``.npz`` per clip into ``drpose/motion/assets/``.
The body pose is SMPL-X axis-angle, valid for any SMPL-X model; the stand-in body only served
as the skeleton the joints were fitted to.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from drpose.motion.bvh_fit import fit_bvh
from drpose.motion.load import ASSETS_DIR, DEFAULT_SAMPLE_CLIPS

ASSIMP_BVH_DIR = Path("/usr/share/assimp/models/BVH")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bvh-dir", type=Path, default=ASSIMP_BVH_DIR)
    parser.add_argument("--out", type=Path, default=ASSETS_DIR)
    parser.add_argument("--frames", type=int, default=300, help="frames per clip after the step")
    parser.add_argument("--frame-step", type=int, default=4, help="4: 120 fps -> 30 fps")
    args = parser.parse_args(argv)
    args.out.mkdir(parents=True, exist_ok=True)
    for clip in DEFAULT_SAMPLE_CLIPS:
        path = args.bvh_dir / f"{clip.removeprefix('cmu_')}.bvh"
        if not path.exists():
            raise SystemExit(f"{path} not found: apt-get install assimp-testmodels")
        sequence, report = fit_bvh(path, frame_step=args.frame_step, max_frames=args.frames)
        sequence.source = f"CMU mocap (mocap.cs.cmu.edu) via cgspeed BVH: {path.name}"
        sequence.save(args.out / f"{clip}.npz")
        print(f"{clip}: {report.summary()}")


if __name__ == "__main__":
    main()
