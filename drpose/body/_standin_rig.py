"""Rigging the stand-in mesh: skinning weights, joint regressor, blend shapes, hands, landmarks.

All functions take the rest mesh (vertices (V, 3) metres, faces (F, 3)) and the design from
:mod:`drpose.body._standin_shape` and return arrays in the layout of SMPL-X's model file.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import scipy.linalg

from drpose.body._standin_shape import FLOOR_Y, LEFT_FINGERS, Primitive
from drpose.body.joints import NUM_SMPLX_JOINTS, SMPLX_JOINT_NAMES, SMPLX_PARENTS

_MIRROR = np.array([-1.0, 1.0, 1.0])


def _children(joint: int) -> list[int]:
    return [c for c, p in enumerate(SMPLX_PARENTS) if p == joint]


def part_distances(primitives: Sequence[Primitive], points: np.ndarray) -> np.ndarray:
    """Signed distance of points (N, 3) to each joint's own solids, (N, 55); inf if it has none."""
    dist = np.full((points.shape[0], NUM_SMPLX_JOINTS), np.inf)
    for prim in primitives:
        dist[:, prim.owner] = np.minimum(dist[:, prim.owner], prim.sdf(points))
    return dist


def part_sizes(primitives: Sequence[Primitive]) -> np.ndarray:
    """A thickness (m) per joint: the largest radius among its solids, (55,); 0 if none."""
    size = np.zeros(NUM_SMPLX_JOINTS)
    for prim in primitives:
        r = max(prim.radii[:2]) if prim.kind == "cone" else min(prim.radii)
        size[prim.owner] = max(size[prim.owner], r)
    return size


def skinning_weights(dist: np.ndarray, sizes: np.ndarray, max_influences: int = 4) -> np.ndarray:
    """Linear-blend-skinning weights from distances to the parts, (V, 55) float64, rows sum to 1.

    Each vertex is bound to its nearest part (joint j*) and blended with the parts next to it in
    the tree (j*'s parent and children) by a softmax of -distance / tau_j, tau_j = a quarter of the
    part's thickness (clipped to 3-15 mm): weights change smoothly across a joint over a few
    centimetres. Weights below 1e-3 are dropped and at most `max_influences` kept.
    """
    tau = np.clip(0.25 * sizes, 0.003, 0.015)
    nearest = np.argmin(dist, axis=1)
    allowed = np.zeros((NUM_SMPLX_JOINTS, NUM_SMPLX_JOINTS), dtype=bool)
    for j in range(NUM_SMPLX_JOINTS):
        family = [j, *_children(j)] + ([SMPLX_PARENTS[j]] if SMPLX_PARENTS[j] >= 0 else [])
        allowed[j, family] = True
    logits = np.where(allowed[nearest] & np.isfinite(dist), -dist / tau, -np.inf)
    logits -= logits.max(axis=1, keepdims=True)
    weights = np.exp(logits)
    weights /= weights.sum(axis=1, keepdims=True)
    weights[weights < 1e-3] = 0.0
    keep = np.argsort(-weights, axis=1, kind="stable")[:, :max_influences]
    sparse = np.zeros_like(weights)
    np.put_along_axis(sparse, keep, np.take_along_axis(weights, keep, axis=1), axis=1)
    return sparse / sparse.sum(axis=1, keepdims=True)


def _bone_axis(joints: np.ndarray, j: int) -> np.ndarray:
    """Unit direction of the limb through joint j (bisector of the incoming and outgoing bone)."""
    parent, children = SMPLX_PARENTS[j], _children(j)
    axis = np.zeros(3)
    if parent >= 0:
        d = joints[j] - joints[parent]
        axis += d / np.linalg.norm(d)
    if len(children) == 1:
        d = joints[children[0]] - joints[j]
        axis += d / np.linalg.norm(d)
    if parent < 0 or np.linalg.norm(axis) < 1e-6:
        return np.array([0.0, 1.0, 0.0])
    return axis / np.linalg.norm(axis)


def joint_regressor(
    verts: np.ndarray, joints: np.ndarray, nearest_part: np.ndarray, sizes: np.ndarray
) -> np.ndarray:
    """Sparse joint regressor (55, V) with J_regressor @ verts == joints exactly.

    Joint j reads the ring of surface vertices around it: vertices of its own part or its
    parent's part (the root: its children's), within a slab across the limb axis and a radius.
    Starting from Gaussian weights p on the ring, the weights are the closest ones (in the
    p-weighted norm) that sum to 1 and reproduce the rest joint: w_i = p_i (1 + (v_i - m)^T
    C^-1 (J - m)), m and C the p-weighted mean and covariance of the ring. Joints inside the
    ring get nearly the plain Gaussian average, so they follow shape changes like the real model.
    """
    regressor = np.zeros((NUM_SMPLX_JOINTS, len(verts)))
    for j in range(NUM_SMPLX_JOINTS):
        parent = SMPLX_PARENTS[j]
        owners = [j, parent] if parent >= 0 else [j, *_children(j)]
        if sizes[j] == 0.0:  # no solid of its own (eyes): read its parent's part around it
            owners, size = [parent], 0.02
        else:
            size = sizes[j]
        radius = 2.5 * size + 0.01
        offset = verts - joints[j]
        dist = np.linalg.norm(offset, axis=1)
        axial = np.abs(offset @ _bone_axis(joints, j))
        on_part = np.isin(nearest_part, owners) & (dist < radius)
        half = 0.4 * size + 0.004
        ring = on_part & (axial < half) if sizes[j] > 0 else on_part
        while ring.sum() < 12 and half < radius:
            half *= 1.5
            ring = on_part & (axial < half)
        idx = np.flatnonzero(ring)
        if len(idx) < 4:
            raise RuntimeError(f"joint regressor: no vertex ring around {SMPLX_JOINT_NAMES[j]}")
        p = np.exp(-0.5 * (dist[idx] / (radius / 2)) ** 2)
        p /= p.sum()
        mean = p @ verts[idx]
        centred = verts[idx] - mean
        cov = (centred * p[:, None]).T @ centred
        lam = np.linalg.solve(cov + 1e-12 * np.eye(3), joints[j] - mean)
        regressor[j, idx] = p * (1.0 + centred @ lam)
    return regressor


def ray_hits(
    verts: np.ndarray, faces: np.ndarray, origins: np.ndarray, dirs: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """First intersection of rays with the mesh (Moller-Trumbore).

    Args:
        verts (V, 3), faces (F, 3); origins, dirs (R, 3).

    Returns:
        face index (R,) int64, barycentric coordinates (R, 3) of the hit in that face, hit
        points (R, 3). Raises RuntimeError if a ray misses.
    """
    tri = verts[faces]
    e1, e2 = tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0]
    face_idx = np.empty(len(origins), dtype=np.int64)
    bary = np.empty((len(origins), 3))
    for r, (o, d) in enumerate(zip(origins, dirs, strict=True)):
        pvec = np.cross(d, e2)
        det = np.einsum("ij,ij->i", e1, pvec)
        ok = np.abs(det) > 1e-14
        inv = np.where(ok, 1.0 / np.where(ok, det, 1.0), 0.0)
        tvec = o - tri[:, 0]
        u = np.einsum("ij,ij->i", tvec, pvec) * inv
        qvec = np.cross(tvec, e1)
        v = (qvec @ d) * inv
        t = np.einsum("ij,ij->i", e2, qvec) * inv
        hit = ok & (u >= 0) & (v >= 0) & (u + v <= 1) & (t > 0)
        if not hit.any():
            raise RuntimeError(f"stand-in landmark ray from {o} along {d} misses the body")
        best = np.flatnonzero(hit)[np.argmin(t[hit])]
        face_idx[r] = best
        bary[r] = (1 - u[best] - v[best], u[best], v[best])
    points = np.einsum("rk,rkc->rc", bary, verts[faces[face_idx]])
    return face_idx, bary, points


def vertex_joint_targets(joints: np.ndarray) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """For each smplx vertex joint: a ray (origin, direction) whose first hit is its place."""
    down_z = np.array([0.0, 0.0, -1.0])
    rays = {
        "nose": (np.array([0.0, 0.279, 1.0]), down_z),
        "leye": (np.array([0.032, 0.318, 1.0]), down_z),
        "lear": (np.array([1.0, 0.305, 0.012]), np.array([-1.0, 0.0, 0.0])),
        "LBigToe": (np.array([0.094, -1.285, 1.0]), down_z),
        "LSmallToe": (np.array([0.146, -1.288, 1.0]), down_z),
        "LHeel": (np.array([0.097, -1.285, -1.0]), -down_z),
    }
    wrist = joints[SMPLX_JOINT_NAMES.index("left_wrist")]
    for finger in LEFT_FINGERS:
        direction = np.asarray(finger.direction) / np.linalg.norm(finger.direction)
        tip = wrist + np.asarray(finger.base) + sum(finger.lengths) * direction
        rays["l" + finger.name] = (tip + 0.05 * direction, -direction)
    for name in list(rays):
        origin, direction = rays[name]
        mirrored = "r" + name[1:] if name[0] == "l" else "R" + name[1:]
        if name[0] in "lL":
            rays[mirrored] = (origin * _MIRROR, direction * _MIRROR)
    return rays


# iBUG-68 face landmarks 17-67 (the 51 that smplx calls static), as front-view (x, y) in metres,
# ordered as smplx lists them: brows, nose bridge, nostrils, eyes, outer and inner lips. Points run
# from the subject's right (-x) to left within each group, as in the iBUG scheme.
_BROW = [(-0.055, 0.340), (-0.045, 0.345), (-0.035, 0.347), (-0.025, 0.346), (-0.014, 0.343)]
_EYE_R = [(-0.046, 0.318), (-0.037, 0.323), (-0.027, 0.323), (-0.018, 0.318), (-0.027, 0.314),
          (-0.037, 0.314)]  # fmt: skip
_EYE_L = [(0.018, 0.318), (0.027, 0.323), (0.037, 0.323), (0.046, 0.318), (0.037, 0.314),
          (0.027, 0.314)]  # fmt: skip
_MOUTH_Y = 0.232
_LIPS_OUT = [(-0.025, 0.0), (-0.016, 0.008), (-0.006, 0.010), (0.0, 0.009), (0.006, 0.010),
             (0.016, 0.008), (0.025, 0.0), (0.016, -0.009), (0.006, -0.012), (0.0, -0.012),
             (-0.006, -0.012), (-0.016, -0.009)]  # fmt: skip
_LIPS_IN = [(-0.019, 0.0), (-0.007, 0.003), (0.0, 0.003), (0.007, 0.003), (0.019, 0.0),
            (0.007, -0.003), (0.0, -0.003), (-0.007, -0.003)]  # fmt: skip
FACE_LANDMARKS_XY = np.array(
    _BROW
    + [(-x, y) for x, y in reversed(_BROW)]
    + [(0.0, 0.318), (0.0, 0.305), (0.0, 0.292), (0.0, 0.280)]
    + [(-0.014, 0.272), (-0.007, 0.269), (0.0, 0.268), (0.007, 0.269), (0.014, 0.272)]
    + _EYE_R
    + _EYE_L
    + [(x, _MOUTH_Y + y) for x, y in _LIPS_OUT + _LIPS_IN]
)
"""(51, 2) front-view positions of the static face landmarks."""


def face_landmarks(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Static landmarks: (51,) face indices and (51, 3) barycentric coordinates."""
    origins = np.column_stack([FACE_LANDMARKS_XY, np.ones(len(FACE_LANDMARKS_XY))])
    dirs = np.tile([0.0, 0.0, -1.0], (len(origins), 1))
    head = _faces_near(verts, faces, np.array([0.0, 0.30, 0.05]), 0.15)
    idx, bary, _ = ray_hits(verts, faces[head], origins, dirs)
    return head[idx], bary


def _faces_near(verts: np.ndarray, faces: np.ndarray, centre: np.ndarray, radius: float):
    return np.flatnonzero(np.linalg.norm(verts[faces].mean(1) - centre, axis=1) < radius)


def contour_landmarks(verts: np.ndarray, faces: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Dynamic jaw-contour landmarks: (79, 17) face indices, (79, 17, 3) barycentric coordinates.

    Row r serves a head yaw of r degrees (r <= 39) or 39 - r degrees (r > 39), as smplx's look-up
    expects. Each row's 17 points lie on the jaw line, from the subject's right to left, at
    azimuths spread over +-80 degrees around the head's vertical axis and shifted by the yaw (an
    approximation of the silhouette contour the real table stores).
    """
    axis_point = np.array([0.0, 0.0, 0.030])
    head = _faces_near(verts, faces, np.array([0.0, 0.25, 0.03]), 0.13)
    rows_idx, rows_bary = [], []
    for row in range(79):
        yaw = row if row <= 39 else 39 - row
        azimuth = np.deg2rad(np.clip(np.linspace(-80.0, 80.0, 17) + yaw, -85.0, 85.0))
        heights = 0.268 - 0.072 * np.cos(azimuth) ** 2
        dirs = np.column_stack([-np.sin(azimuth), np.zeros(17), -np.cos(azimuth)])
        origins = np.column_stack([axis_point[0] - dirs[:, 0], heights, axis_point[2] - dirs[:, 2]])
        idx, bary, _ = ray_hits(verts, faces[head], origins, dirs)
        rows_idx.append(head[idx])
        rows_bary.append(bary)
    return np.stack(rows_idx), np.stack(rows_bary)


def _smoothstep(e0: float, e1: float, x: np.ndarray) -> np.ndarray:
    t = np.clip((x - e0) / (e1 - e0), 0.0, 1.0)
    return t * t * (3 - 2 * t)


def _symmetric_random_fields(verts: np.ndarray, count: int, seed: int, freq: float) -> np.ndarray:
    """Smooth random displacement fields, mirror-symmetric in x, (V*3, count)."""
    rng = np.random.default_rng(seed)
    terms = 4
    omega = rng.normal(0.0, 2 * np.pi * freq, size=(count, terms, 3))
    phase = rng.uniform(0, 2 * np.pi, size=(count, terms))
    amp = rng.normal(0.0, 1.0, size=(count, terms, 3))

    def field(p: np.ndarray) -> np.ndarray:
        s = np.sin(np.einsum("ktc,vc->kvt", omega, p) + phase[:, None, :])  # (K, V, T)
        return np.einsum("kvt,ktc->kvc", s, amp)  # (K, V, 3)

    sym = 0.5 * (field(verts) + field(verts * _MIRROR) * _MIRROR)
    return sym.transpose(1, 2, 0).reshape(-1, count)


def _orthonormal_after(designed: np.ndarray, extra: np.ndarray) -> np.ndarray:
    """Orthonormal columns spanning `extra` with the span of `designed` projected out."""
    q_designed, _ = np.linalg.qr(designed)
    extra = extra - q_designed @ (q_designed.T @ extra)
    for _ in range(2):  # Cholesky-QR, twice for orthogonality to rounding error
        chol = np.linalg.cholesky(extra.T @ extra)
        extra = scipy.linalg.solve_triangular(chol, extra.T, lower=True).T
    return extra


def shape_directions(
    verts: np.ndarray, normals: np.ndarray, joints: np.ndarray, nearest_part: np.ndarray,
    num: int = 300,
) -> np.ndarray:  # fmt: skip
    """Shape blend shapes (V, 3, num), metres per unit coefficient.

    The first ten are designed to read like SMPL-X's leading betas: 0 stature (uniform scale
    about the pelvis, 4 %), 1 girth (thickness around the bones, +12 %), 2 leg length, 3 shoulder
    width, 4 belly, 5 hip width, 6 arm length, 7 head size, 8 torso length, 9 chest depth. The
    rest are smooth random fields, mirror-symmetric, orthogonal to the first ten and to each
    other, with root-mean-square displacement falling from 4 mm (beta 10) as 1/k.
    """
    x, y = verts[:, 0], verts[:, 1]
    side = np.sign(x)
    name = {n: i for i, n in enumerate(SMPLX_JOINT_NAMES)}
    pelvis, head = joints[name["pelvis"]], joints[name["head"]]
    radial = _radial_offsets(verts, joints, nearest_part)
    is_head = np.isin(nearest_part, [name["head"], name["jaw"]])
    is_hand = (nearest_part >= name["left_wrist"]) & ~is_head
    thickness_scale = np.where(is_head, 0.3, np.where(is_hand, 0.5, 1.0))[:, None]
    zeros = np.zeros_like(verts)

    def along(axis: int, amount: np.ndarray) -> np.ndarray:
        d = zeros.copy()
        d[:, axis] = amount
        return d

    designed = [
        0.04 * (verts - pelvis),
        0.12 * radial * thickness_scale,
        along(1, -0.07 * _smoothstep(-0.42, FLOOR_Y, y)),
        along(0, 0.02 * side * _smoothstep(0.05, 0.19, np.abs(x)) * _smoothstep(-0.15, 0.0, y)),
        0.03 * (np.exp(-(((y + 0.20) / 0.10) ** 2)) * np.maximum(normals[:, 2], 0.0)
                * (np.abs(x) < 0.2))[:, None] * normals,
        along(0, 0.02 * side * np.exp(-(((y + 0.45) / 0.12) ** 2))
              * _smoothstep(0.02, 0.12, np.abs(x)) * (np.abs(x) < 0.3)),
        along(0, 0.05 * side * np.clip((np.abs(x) - 0.19) / 0.71, 0.0, 1.0)),
        0.06 * (verts - head) * is_head[:, None],
        along(1, 0.04 * _smoothstep(-0.40, -0.10, y)),
        0.02 * (np.exp(-((y / 0.10) ** 2)) * np.abs(normals[:, 2]) * (np.abs(x) < 0.2))[:, None]
        * normals,
    ]  # fmt: skip
    designed_mat = np.stack([d.reshape(-1) for d in designed], axis=1)
    random = _symmetric_random_fields(verts, num - len(designed), seed=1, freq=1.5)
    random = _orthonormal_after(designed_mat, random)
    k = np.arange(len(designed), num)
    rms = 0.004 * len(designed) / k
    random *= rms * np.sqrt(len(verts))  # unit columns -> per-vertex RMS displacement `rms`
    dirs = np.concatenate([designed_mat, random], axis=1)
    return dirs.reshape(len(verts), 3, num)


def _radial_offsets(verts: np.ndarray, joints: np.ndarray, nearest_part: np.ndarray):
    """Offset of each vertex from the bone of its part (segment joint -> child joint)."""
    offsets = np.zeros_like(verts)
    for j in range(NUM_SMPLX_JOINTS):
        sel = nearest_part == j
        if not sel.any():
            continue
        children = _children(j)
        a = joints[j]
        b = joints[children[0]] if len(children) == 1 else a
        ab = b - a
        t = np.zeros(sel.sum())
        if np.dot(ab, ab) > 0:
            t = np.clip((verts[sel] - a) @ ab / np.dot(ab, ab), 0.0, 1.0)
        offsets[sel] = verts[sel] - (a + t[:, None] * ab)
    return offsets


def expression_directions(
    verts: np.ndarray, nearest_part: np.ndarray, num: int = 100
) -> np.ndarray:
    """Expression blend shapes (V, 3, num), confined to the face.

    0 opens the mouth (lower lip and chin down, 8 mm), 1 smiles (mouth corners up and out,
    4 mm), 2 raises the brows (4 mm); the rest are smooth random fields on the face,
    mirror-symmetric, orthogonal to the first three and each other, RMS over the face 2 mm / k.
    """
    x, y, z = verts.T
    name = {n: i for i, n in enumerate(SMPLX_JOINT_NAMES)}
    on_face = np.isin(nearest_part, [name["head"], name["jaw"]]) & (z > 0.05)
    face = (
        on_face
        * _smoothstep(0.05, 0.09, z)
        * _smoothstep(0.17, 0.20, y)
        * (1 - _smoothstep(0.36, 0.40, y))
    )
    zeros = np.zeros_like(verts)
    mouth = np.exp(-((x / 0.035) ** 2) - ((y - 0.232) / 0.02) ** 2)
    corners = np.exp(-(((np.abs(x) - 0.025) / 0.012) ** 2) - ((y - 0.232) / 0.012) ** 2)
    brows = np.exp(-(((np.abs(x) - 0.035) / 0.025) ** 2) - ((y - 0.345) / 0.015) ** 2)
    open_mouth, smile, brow = zeros.copy(), zeros.copy(), zeros.copy()
    open_mouth[:, 1] = (
        -0.008
        * face
        * (y < 0.232)
        * np.maximum(mouth, _smoothstep(0.232, 0.19, y) * (np.abs(x) < 0.05))
    )
    smile[:, 0] = 0.004 * face * corners * np.sign(x)
    smile[:, 1] = 0.004 * face * corners
    brow[:, 1] = 0.004 * face * brows
    designed = np.stack([d.reshape(-1) for d in (open_mouth, smile, brow)], axis=1)
    rows = np.flatnonzero(np.repeat(face, 3) > 0)  # everything else stays exactly still
    random = np.zeros((len(verts) * 3, num - 3))
    fields = _symmetric_random_fields(verts[face > 0], num - 3, seed=2, freq=6.0)
    fields *= np.repeat(face[face > 0], 3)[:, None]
    random[rows] = _orthonormal_after(designed[rows], fields)
    face_count = max(int((face > 0.5).sum()), 1)
    random *= (0.002 / np.arange(1, num - 2)) * np.sqrt(face_count)
    return np.concatenate([designed, random], axis=1).reshape(len(verts), 3, num)


def hand_pca(hand_mean_flexion: float = 0.15) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                        np.ndarray]:  # fmt: skip
    """Hand pose bases for both hands.

    Returns (components_left (45, 45), components_right (45, 45), mean_left (45,),
    mean_right (45,)). Components are orthonormal rows: 0 = all fingers flex together, 1 = fingers
    spread, 2 = thumb flexes, 3 = index against little finger, then a fixed orthonormal completion.
    The mean is a relaxed hand: every finger joint flexed by hand_mean_flexion radians. Axis-angle
    vectors are in the rest frame; the right hand mirrors the left (x -> -x on pseudo-vectors).
    """
    flex = np.zeros((15, 3))
    spread = np.zeros((15, 3))
    for f, finger in enumerate(LEFT_FINGERS):
        direction = np.asarray(finger.direction) / np.linalg.norm(finger.direction)
        axis = np.cross(direction, [0.0, -1.0, 0.0])  # tip moves towards the palm (-y)
        axis /= np.linalg.norm(axis)
        flex[3 * f : 3 * f + 3] = axis
        spread[3 * f] = [0.0, 1.0, 0.0] * np.array(
            {"index": 1, "middle": 0, "ring": -1, "pinky": -2, "thumb": 1}[finger.name]
        )
    thumb = np.zeros((15, 3))
    thumb[12:] = flex[12:]
    index_vs_little = np.zeros((15, 3))
    index_vs_little[0:3] = flex[0:3]
    index_vs_little[6:9] = -flex[6:9]
    designed = np.stack([b.reshape(-1) for b in (flex, spread, thumb, index_vs_little)], axis=1)
    q, _ = np.linalg.qr(np.concatenate([designed, np.eye(45)], axis=1))
    q = q[:, :45]
    q[:, :4] *= np.sign(np.einsum("ik,ik->k", q[:, :4], designed))  # keep the designed signs
    left = q.T
    flip = np.tile(-_MIRROR, 15)
    right = left * flip
    mean_left = hand_mean_flexion * flex.reshape(-1)
    return left, right, mean_left, mean_left * flip
