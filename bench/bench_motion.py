"""Motion import and pose selection: BVH fitting speed and error, FPS over 300K poses.

- ``bvh fit``: :func:`drpose.motion.bvh_fit.fit_bvh` on CMU 01_01 (Debian ``assimp-testmodels``;
  without it, a synthetic BVH of the SMPL-X skeleton), 256 frames at 30 fps; poses per second and
  the mean per-joint error (mm) are in ``extra_info``.
- ``fit step``: one loss forward+backward for 64 frames, joints through
  :class:`drpose.motion.body_joints.BodyJoints` against the full ``smplx.SMPLX`` forward (baseline).
- ``fps 300K poses``: :func:`drpose.motion.select.farthest_point_sampling` on 300,000 synthetic
  poses (:func:`synthetic_motion`: 300 clips of 1,000 frames wandering between the packaged CMU
  poses) with 1,500 anchors; and, at 150 anchors, against textbook FPS in torch (a full distance
  pass per pick; its cost per pick is constant, so x10 gives its 1,500-anchor time).
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from drpose.body import StandInModelWarning, load_smplx
from drpose.motion.body_joints import BodyJoints
from drpose.motion.bvh import format_bvh
from drpose.motion.bvh_fit import fit_bvh
from drpose.motion.load import default_pose_sequences
from drpose.motion.select import farthest_point_sampling, pose_features
from drpose.motion.sequence import PoseSequence

CMU_CLIP = Path("/usr/share/assimp/models/BVH/01_01.bvh")
FIT_FRAMES = 256
STEP_FRAMES = 64
POSES, ANCHORS = 300_000, 1500


@pytest.fixture(scope="module")
def smplx_model():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StandInModelWarning)
        return load_smplx()


def synthetic_motion(clips: int, frames: int, seed: int = 0) -> PoseSequence:
    """Plausible synthetic SMPL-X motion: each clip interpolates linearly (in axis-angle) between
    random key poses of the packaged CMU sample, one every 0.5-2 s, plus a 0.05 rad wobble; the
    heading turns freely. Real poses keep the data's structure (joints move together), which
    random independent joint angles would not."""
    keys = np.concatenate([s.body_pose for s in default_pose_sequences()])
    rng = np.random.default_rng(seed)
    body_pose = np.empty((clips, frames, 63), dtype=np.float32)
    for clip in range(clips):
        times = np.cumsum(rng.uniform(15, 60, frames // 15 + 2))
        times = np.concatenate([[0.0], times[times < frames - 1], [frames - 1.0]])
        chosen = keys[rng.integers(0, len(keys), len(times))]
        for dof in range(63):
            body_pose[clip, :, dof] = np.interp(np.arange(frames), times, chosen[:, dof])
    body_pose += rng.normal(0, 0.05, body_pose.shape).astype(np.float32)
    heading = rng.uniform(-math.pi, math.pi, (clips, 1)) + np.linspace(0, 2, frames)[None]
    orient = np.zeros((clips * frames, 3), dtype=np.float32)
    orient[:, 1] = heading.reshape(-1)
    return PoseSequence(
        global_orient=orient,
        body_pose=body_pose.reshape(-1, 63),
        transl=np.zeros((clips * frames, 3)),
        betas=np.zeros(10),
        fps=30.0,
        source="synthetic",
    )


def fit_input(tmp_path: Path, body: BodyJoints) -> tuple[Path, dict]:
    """The CMU clip when installed, else the SMPL-X skeleton as a BVH with random motion."""
    if CMU_CLIP.exists():
        return CMU_CLIP, {"frame_step": 4, "max_frames": FIT_FRAMES}
    from scipy.spatial.transform import Rotation

    from drpose.body.joints import SMPLX_JOINT_NAMES, SMPLX_PARENTS

    motion = synthetic_motion(1, FIT_FRAMES)
    rest = body.rest_joints.numpy() * 100
    parents = list(SMPLX_PARENTS[:22])
    rotations = np.concatenate([motion.global_orient, motion.body_pose], axis=1).reshape(-1, 3)
    angles = Rotation.from_rotvec(rotations).as_euler("ZXY", degrees=True)
    text = format_bvh(
        list(SMPLX_JOINT_NAMES[:22]),
        parents,
        rest - rest[[max(p, 0) for p in parents]],
        np.tile(rest[0], (FIT_FRAMES, 1)),
        angles.reshape(FIT_FRAMES, 22, 3),
    )
    path = tmp_path / "smplx_skeleton.bvh"
    path.write_text(text)
    return path, {"joint_map": [(n, n, 1.0) for n in SMPLX_JOINT_NAMES[:22]]}


def bench_bvh_fit(benchmark, smplx_model, tmp_path):
    body = BodyJoints(smplx_model)
    path, options = fit_input(tmp_path, body)
    results = []
    benchmark.group = f"bvh fit ({path.name}, {FIT_FRAMES} frames)"
    benchmark.pedantic(
        lambda: results.append(fit_bvh(path, body=body, **options)), rounds=1, iterations=1
    )
    sequence, report = results[-1]
    benchmark.extra_info.update(
        poses_per_second=len(sequence) / benchmark.stats.stats.median,
        poses_per_cpu_second=len(sequence) / report.cpu_seconds,
        mean_error_mm=report.mean_mm,
        median_error_mm=float(np.median(report.errors_mm)),
        per_joint_mm=report.per_joint_mm,
        summary=report.summary(),
    )


@pytest.mark.parametrize("label", ["smplx.SMPLX forward (baseline)", "BodyJoints"])
def bench_fit_step(measure, smplx_model, label):
    generator = torch.Generator().manual_seed(0)
    orient = (torch.randn(STEP_FRAMES, 3, generator=generator) * 0.3).requires_grad_()
    pose = (torch.randn(STEP_FRAMES, 63, generator=generator) * 0.3).requires_grad_()
    target = torch.randn(STEP_FRAMES, 22, 3, generator=generator)
    body = BodyJoints(smplx_model)
    model = load_smplx(batch_size=STEP_FRAMES) if label.startswith("smplx") else None

    def step() -> None:
        if model is None:
            joints = body(orient, pose)
        else:
            joints = model(global_orient=orient, body_pose=pose).joints[:, :22]
        ((joints - target) ** 2).sum().backward()
        orient.grad = pose.grad = None

    measure(step, group=f"fit step ({STEP_FRAMES} frames)", label=label,
            baseline=model is not None)  # fmt: skip


@pytest.fixture(scope="module")
def fps_features(smplx_model) -> np.ndarray:
    return pose_features(synthetic_motion(POSES // 1000, 1000, seed=1))


def textbook_fps(features: np.ndarray, count: int) -> np.ndarray:
    points = torch.from_numpy(features)
    nearest = torch.full((len(points),), math.inf)
    picks = [0]
    for _ in range(count - 1):
        distance = ((points - points[picks[-1]]) ** 2).sum(1)
        torch.minimum(nearest, distance, out=nearest)
        picks.append(int(torch.argmax(nearest)))
    return np.array(picks)


@pytest.mark.parametrize(
    ("label", "anchors"),
    [("textbook torch (baseline)", 150), ("pruned (drpose)", 150), ("pruned (drpose)", ANCHORS)],
)
def bench_fps(benchmark, fps_features, label, anchors):
    select = textbook_fps if label.startswith("textbook") else farthest_point_sampling
    picks = []
    benchmark.group = f"fps {POSES // 1000}K poses x {anchors} anchors"
    benchmark.extra_info.update(label=label, baseline=label.startswith("textbook"))
    benchmark.pedantic(lambda: picks.append(select(fps_features, anchors)), rounds=1, iterations=1)
    assert len(set(picks[-1].tolist())) == anchors
