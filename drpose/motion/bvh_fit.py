"""Fit SMPL-X body poses to BVH joint positions.

Pipeline (:func:`fit_bvh`):

1. Parse the file (:mod:`drpose.motion.bvh`), forward kinematics to world joint positions, lengths
   to metres with the detected (or given) unit; a z-up file is turned y-up.
2. Pick the joint correspondence (:mod:`drpose.motion.bvh_skeletons`, or ``joint_map=``).
3. Scale: the BVH performer is not the SMPL-X body, so the target positions are multiplied by one
   scale factor per clip. Its start value is the ratio of the rest-pose heights of the mapped
   joints (SMPL-X / BVH); it is then refined (log-scale, as a free parameter) on up to
   ``calibration_frames`` frames spread over the clip, and frozen.
4. Key frames (every ``key_step``-th), per chunk of ``chunk_size``, batched
   (:func:`fit_joints`): global orientation and translation start from a Kabsch alignment of the
   mapped torso joints, the body pose from the previous chunk's last frame (zeros for the first
   chunk). Then every frame, started from the key frames' interpolation (slerp per joint), is
   refined with ``refine_iterations``. Each step runs L-BFGS (strong Wolfe line search) over
   the whole chunk on

       sum_k w_k |J_k(θ) - s·P_k|² / sum_k w_k                      (data, per frame, m²)
       + pose_weight · |body_pose|²                                   (pose prior: towards rest)
       + smooth_weight · |body_pose_t - body_pose_{t-1}|²             (within the chunk)

   The prior settles what joint positions leave open (bone twist, unmapped collars and spine).
5. Report (:class:`FitReport`): per-frame, per-mapped-joint distance in mm between the fitted
   SMPL-X joint and the scaled BVH joint. Part of it is the rigs' different joint placement
   (e.g. a BVH "hip" is not where SMPL-X puts its hip), not fitting error.

The fitted ``transl`` is in the scaled space: the BVH root path times ``scale``.
"""

from __future__ import annotations

import math
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from drpose.motion.body_joints import BodyJoints
from drpose.motion.bvh import (
    BvhMotion,
    detect_unit_scale,
    forward_kinematics,
    parse_bvh,
    rest_positions,
)
from drpose.motion.bvh_skeletons import SKELETON_MAPS, JointMap, match_skeleton, normalise_name
from drpose.motion.sequence import R_ZUP_TO_YUP, PoseSequence

_TORSO = ("pelvis", "left_hip", "right_hip", "spine1", "spine2", "spine3", "neck",
          "left_shoulder", "right_shoulder", "left_collar", "right_collar")  # fmt: skip


@dataclass
class FitConfig:
    """Optimisation settings of :func:`fit_joints` (defaults: see the module docstring)."""

    iterations: int = 150  # L-BFGS iterations per chunk
    history_size: int = 20
    pose_weight: float = 1e-6  # per rad^2; the data term is in m^2: 1 rad^2 ~ (1 mm)^2
    smooth_weight: float = 1e-5
    chunk_size: int = 256
    key_step: int = 4  # key frames: every key_step-th frame, fitted first
    refine_iterations: int = 30  # L-BFGS iterations per chunk of all frames, from the key frames
    calibration_frames: int = 64
    calibration_iterations: int = 200
    # The per-op tensors are small (frames x 22 joints): one thread avoids the threading
    # overhead that dominates (15x slower with 2 threads on a busy 2-core machine). None keeps
    # torch's setting. Restored after the fit.
    num_threads: int | None = 1


@dataclass
class FitReport:
    """Fit quality of one clip.

    Attributes:
        joint_names: K names ``"<bvh> -> <smplx>"`` of the mapped pairs.
        errors_mm: (T, K) float32 distance per frame and mapped joint, millimetres.
        scale: factor applied to the BVH positions (metres after unit conversion -> body metres).
        unit: the unit name used (``"given"`` when a scale was passed).
        skeleton: the correspondence used (a :data:`SKELETON_MAPS` key or ``"custom"``).
        seconds: wall time of the optimisation.
        cpu_seconds: CPU time of the optimisation (all threads of the process; on a busy machine
            the fairer speed measure).
    """

    joint_names: list[str]
    errors_mm: np.ndarray
    scale: float
    unit: str
    skeleton: str
    seconds: float
    cpu_seconds: float

    @property
    def mean_mm(self) -> float:
        return float(self.errors_mm.mean())

    @property
    def per_joint_mm(self) -> dict[str, float]:
        return dict(zip(self.joint_names, self.errors_mm.mean(axis=0).tolist(), strict=True))

    def summary(self) -> str:
        worst = max(self.per_joint_mm.items(), key=lambda item: item[1])
        frames = self.errors_mm.shape[0]
        return (
            f"{self.skeleton} skeleton, unit {self.unit}, scale {self.scale:.3f}: mean "
            f"{self.mean_mm:.1f} mm, median {np.median(self.errors_mm):.1f} mm, worst joint "
            f"{worst[0]} {worst[1]:.1f} mm, {frames} frames at {frames / self.seconds:.0f} poses/s "
            f"({frames / self.cpu_seconds:.0f} per CPU second)"
        )


def _smplx_index(name: str) -> int:
    from drpose.body.joints import SMPLX_JOINT_NAMES

    if name not in SMPLX_JOINT_NAMES[:22]:
        raise ValueError(f"{name!r} is not an SMPL-X body joint (one of {SMPLX_JOINT_NAMES[:22]})")
    return SMPLX_JOINT_NAMES.index(name)


def kabsch(source: torch.Tensor, target: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """Rotations (B, 3, 3) minimising sum_k w_k |R (s_k - s̄) - (t_k - t̄)|² (weighted centroids).

    source: (K, 3) or (B, K, 3); target: (B, K, 3); weights: (K,).
    """
    w = (weights / weights.sum())[None, :, None]
    source = source.expand_as(target)
    s = source - (w * source).sum(1, keepdim=True)
    t = target - (w * target).sum(1, keepdim=True)
    covariance = (w * t).transpose(1, 2) @ s  # (B, 3, 3) = sum w t s^T
    u, _, vh = torch.linalg.svd(covariance)
    sign = torch.sign(torch.linalg.det(u @ vh))
    d = torch.ones_like(u[:, 0])
    d[:, 2] = sign
    return u @ torch.diag_embed(d) @ vh


def _rotvec(matrix: torch.Tensor) -> torch.Tensor:
    from scipy.spatial.transform import Rotation

    return torch.from_numpy(Rotation.from_matrix(matrix.double().numpy()).as_rotvec()).to(matrix)


def _aligned_start(
    body: BodyJoints,
    scaled: torch.Tensor,
    index: torch.Tensor,
    weights: torch.Tensor,
    init_body_pose: torch.Tensor | None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Start values: root rotation and translation aligning the rest torso to the targets
    (Kabsch), body pose ``init_body_pose`` (zeros when None) on every frame."""
    batch = scaled.shape[0]
    rest = body.rest_joints.to(scaled)[index]
    torso = torch.tensor([body_name in _TORSO for body_name in _names(index)])
    torso_weights = weights * torso if torso.sum() >= 3 else weights
    rotation = kabsch(rest, scaled, torso_weights)
    w = (torso_weights / torso_weights.sum())[None, :, None]
    # transl so that the rotated rest torso centroid lands on the target's.
    pelvis_rest = body.rest_joints.to(scaled)[0]
    rest_centroid = (w[0] * rest).sum(0)
    moved = (rotation @ (rest_centroid - pelvis_rest)) + pelvis_rest
    transl = (w * scaled).sum(1) - moved
    if init_body_pose is None:
        init_body_pose = torch.zeros(63)
    return _rotvec(rotation), init_body_pose.to(scaled).expand(batch, 63), transl


def fit_joints(
    body: BodyJoints,
    targets: torch.Tensor,
    smplx_indices: Sequence[int],
    weights: torch.Tensor,
    *,
    config: FitConfig | None = None,
    scale: float = 1.0,
    fit_scale: bool = False,
    init_body_pose: torch.Tensor | None = None,
    init: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    iterations: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """Fit one batch of frames.

    Args:
        body: the SMPL-X joint function.
        targets: (B, K, 3) float32 target positions in metres (before ``scale``).
        smplx_indices: K SMPL-X joint indices (0-21) the targets correspond to.
        weights: (K,) per-pair weights.
        scale: factor applied to the targets; optimised as log-scale when ``fit_scale``.
        init_body_pose: (63,) or (B, 63) start of the body pose (zeros when None).
        init: (global_orient (B, 3), body_pose (B, 63), transl (B, 3)) to start from instead of
            the Kabsch alignment and ``init_body_pose``.

    Returns:
        global_orient (B, 3), body_pose (B, 63), transl (B, 3), scale.
    """
    config = config or FitConfig()
    batch = targets.shape[0]
    index = torch.as_tensor(list(smplx_indices))
    weights = weights.to(targets)
    if init is None:
        init = _aligned_start(body, targets * scale, index, weights, init_body_pose)
    global_orient, body_pose, transl = (v.detach().clone().requires_grad_(True) for v in init)
    log_scale = torch.tensor(math.log(scale), requires_grad=fit_scale)
    parameters = [global_orient, body_pose, transl] + ([log_scale] if fit_scale else [])
    # One L-BFGS over the whole batch: the frames are independent problems (coupled only by the
    # smoothness term), so their summed loss has a block-diagonal Hessian L-BFGS handles well.
    optimizer = torch.optim.LBFGS(
        parameters,
        lr=1.0,
        max_iter=iterations or config.iterations,
        history_size=config.history_size,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )
    normaliser = weights.sum()

    def closure() -> torch.Tensor:
        optimizer.zero_grad(set_to_none=True)
        joints = body(global_orient, body_pose, transl)[:, index]
        residual = joints - targets * log_scale.exp()
        data = ((residual**2).sum(-1) * weights).sum(-1) / normaliser
        loss = data.sum() + config.pose_weight * (body_pose**2).sum()
        if batch > 1:
            loss = loss + config.smooth_weight * ((body_pose[1:] - body_pose[:-1]) ** 2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    return (
        global_orient.detach(),
        body_pose.detach(),
        transl.detach(),
        float(log_scale.detach().exp()),
    )


def _names(index: torch.Tensor) -> list[str]:
    from drpose.body.joints import SMPLX_JOINT_NAMES

    return [SMPLX_JOINT_NAMES[i] for i in index.tolist()]


def resolve_joint_map(
    bvh: BvhMotion, joint_map: str | JointMap | None
) -> tuple[str, list[int], list[int], torch.Tensor, list[str]]:
    """(map name, BVH joint indices, SMPL-X indices, weights (K,), pair labels) for a file."""
    if joint_map is None:
        name, _ = match_skeleton(bvh.names)
        pairs = SKELETON_MAPS[name]
    elif isinstance(joint_map, str):
        if joint_map not in SKELETON_MAPS:
            raise ValueError(f"unknown skeleton map {joint_map!r}; known: {list(SKELETON_MAPS)}")
        name, pairs = joint_map, SKELETON_MAPS[joint_map]
    else:
        name, pairs = "custom", tuple(joint_map)
    lookup = {normalise_name(n): i for i, n in enumerate(bvh.names)}
    missing = [b for b, _, _ in pairs if normalise_name(b) not in lookup]
    if missing:
        raise ValueError(f"{bvh.source}: joints {missing} of map {name!r} are not in the file")
    bvh_index = [lookup[normalise_name(b)] for b, _, _ in pairs]
    smplx_index = [_smplx_index(s) for _, s, _ in pairs]
    weights = torch.tensor([w for _, _, w in pairs], dtype=torch.float32)
    labels = [f"{b} -> {s}" for b, s, _ in pairs]
    return name, bvh_index, smplx_index, weights, labels


def _initial_scale(body: BodyJoints, rest_targets: np.ndarray, smplx_index: list[int]) -> float:
    """Ratio of the vertical extents of the mapped joints in the two rest poses."""
    model = body.rest_joints[smplx_index, 1]
    extent = float(rest_targets[:, 1].max() - rest_targets[:, 1].min())
    return float(model.max() - model.min()) / extent


def fit_bvh(
    path: str | Path,
    *,
    joint_map: str | JointMap | None = None,
    unit_scale: float | None = None,
    up_axis: str = "y",
    frame_step: int = 1,
    max_frames: int | None = None,
    config: FitConfig | None = None,
    body: BodyJoints | None = None,
) -> tuple[PoseSequence, FitReport]:
    """Read a BVH file and fit SMPL-X body poses to it (module docstring).

    Args:
        path: the ``.bvh`` file.
        joint_map: a :data:`SKELETON_MAPS` key, a custom ``[(bvh, smplx, weight), ...]``, or
            None to detect the skeleton from the joint names.
        unit_scale: metres per file unit (None: :func:`drpose.motion.bvh.detect_unit_scale`).
        up_axis: ``"y"`` or ``"z"`` (z-up files are rotated by :data:`R_ZUP_TO_YUP`).
        frame_step: keep every ``frame_step``-th frame (e.g. 4 takes CMU's 120 fps to 30).
        max_frames: keep at most this many frames (after the step).
        config: optimisation settings.
        body: the joint function (default: the default body with betas = 0).

    Returns:
        (PoseSequence with global_orient, body_pose, transl and zero betas, FitReport).
    """
    config = config or FitConfig()
    body = body or BodyJoints.default()
    bvh = parse_bvh(path)
    if unit_scale is None:
        unit_scale, unit = detect_unit_scale(bvh)
    else:
        unit = "given"
    name, bvh_index, smplx_index, weights, labels = resolve_joint_map(bvh, joint_map)
    rows = np.arange(0, bvh.num_frames, frame_step)[:max_frames]
    positions = forward_kinematics(bvh, scale=unit_scale)[rows][:, bvh_index]
    rest = rest_positions(bvh)[bvh_index] * unit_scale
    if up_axis == "z":
        positions, rest = positions @ R_ZUP_TO_YUP.T, rest @ R_ZUP_TO_YUP.T
    elif up_axis != "y":
        raise ValueError(f"up_axis must be 'y' or 'z', got {up_axis!r}")
    targets = torch.from_numpy(positions.astype(np.float32))

    threads = torch.get_num_threads()
    if config.num_threads is not None:
        torch.set_num_threads(config.num_threads)
    try:
        orient, pose, transl, scale, seconds, cpu_seconds = _fit_clip(
            body, targets, rest, smplx_index, weights, config
        )
    finally:
        torch.set_num_threads(threads)
    with torch.no_grad():
        fitted = body(orient, pose, transl)[:, smplx_index]
        errors = (fitted - targets * scale).norm(dim=-1) * 1000.0
    sequence = PoseSequence(
        global_orient=orient.numpy(),
        body_pose=pose.numpy(),
        transl=transl.numpy(),
        betas=np.zeros(10, dtype=np.float32),
        fps=bvh.fps / frame_step,
        source=str(path),
        frame_ids=rows,
    )
    report = FitReport(labels, errors.numpy(), scale, unit, name, seconds, cpu_seconds)
    return sequence, report


def _interpolate(
    key_rows: np.ndarray,
    frames: int,
    orient: torch.Tensor,
    pose: torch.Tensor,
    transl: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Every frame's parameters from the key frames': rotations (root and each body joint) by
    spherical linear interpolation, translation linearly."""
    from scipy.spatial.transform import Rotation, Slerp

    times = np.arange(frames)
    rotations = torch.cat([orient, pose], dim=1).reshape(len(key_rows), 22, 3).double().numpy()
    joints = [
        Slerp(key_rows, Rotation.from_rotvec(rotations[:, j]))(times).as_rotvec()
        for j in range(22)
    ]
    full = torch.from_numpy(np.stack(joints, axis=1).reshape(frames, 66)).to(orient)
    moved = np.stack([np.interp(times, key_rows, transl[:, c].numpy()) for c in range(3)], 1)
    return full[:, :3], full[:, 3:], torch.from_numpy(moved).to(transl)


def _fit_clip(
    body: BodyJoints,
    targets: torch.Tensor,
    rest: np.ndarray,
    smplx_index: list[int],
    weights: torch.Tensor,
    config: FitConfig,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, float, float, float]:
    """Scale calibration; key frames chunk after chunk, warm-started from the previous chunk's
    last body pose; all frames refined from the key frames' interpolation.
    Returns global_orient, body_pose, transl (T, ...), scale, wall and CPU seconds."""
    start, cpu_start = time.perf_counter(), time.process_time()
    scale = _initial_scale(body, rest, smplx_index)
    frames = targets.shape[0]
    calibration = np.linspace(0, frames - 1, min(config.calibration_frames, frames))
    _, _, _, scale = fit_joints(
        body, targets[np.unique(calibration.round().astype(int))], smplx_index, weights,
        config=config, scale=scale, fit_scale=True, iterations=config.calibration_iterations,
    )  # fmt: skip
    key_rows = np.unique(np.r_[np.arange(0, frames, config.key_step), frames - 1])
    keys = []
    previous = None
    for first in range(0, len(key_rows), config.chunk_size):
        chunk = targets[key_rows[first : first + config.chunk_size]]
        orient, pose, transl, _ = fit_joints(
            body, chunk, smplx_index, weights, config=config, scale=scale, init_body_pose=previous
        )
        previous = pose[-1]
        keys.append((orient, pose, transl))
    orient, pose, transl = (torch.cat(parts) for parts in zip(*keys, strict=True))
    if len(key_rows) < frames:
        start_values = _interpolate(key_rows, frames, orient, pose, transl)
        results = []
        for first in range(0, frames, config.chunk_size):
            rows = slice(first, first + config.chunk_size)
            fitted = fit_joints(
                body, targets[rows], smplx_index, weights, config=config, scale=scale,
                init=tuple(v[rows] for v in start_values), iterations=config.refine_iterations,
            )  # fmt: skip
            results.append(fitted[:3])
        orient, pose, transl = (torch.cat(parts) for parts in zip(*results, strict=True))
    seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return orient, pose, transl, scale, seconds, cpu_seconds
