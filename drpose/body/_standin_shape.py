"""The stand-in body's design: rest joints and the solid primitives around the bones.

Everything here is data plus the signed distance functions of two primitive kinds (round cones
and ellipsoids). Units are metres, SMPL-X's body frame: y up, the body faces +z, the subject's
left is +x, rest pose a T-pose with palms down. Left and right are exact mirror images (x -> -x).
Numbers are plausible adult proportions (about 1.74 m tall, soles at y = -1.30), chosen by hand to
resemble SMPL-X's neutral template; they are not measured from it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from drpose.body.joints import SMPLX_JOINT_NAMES

FLOOR_Y = -1.30
"""Height of the soles (m)."""

# Left-side and midline joints of the body (index: position); right ones are mirrored below.
_BODY_JOINTS: dict[str, tuple[float, float, float]] = {
    "pelvis": (0.0, -0.350, 0.015),
    "left_hip": (0.068, -0.442, 0.005),
    "spine1": (0.0, -0.240, -0.020),
    "left_knee": (0.105, -0.805, 0.010),
    "spine2": (0.0, -0.110, -0.012),
    "left_ankle": (0.090, -1.210, -0.040),
    "spine3": (0.0, -0.050, 0.012),
    "left_foot": (0.115, -1.270, 0.085),
    "neck": (0.0, 0.160, -0.018),
    "left_collar": (0.075, 0.070, -0.008),
    "head": (0.0, 0.225, 0.040),
    "left_shoulder": (0.190, 0.110, -0.020),
    "left_elbow": (0.445, 0.095, -0.035),
    "left_wrist": (0.705, 0.100, -0.035),
    "jaw": (0.0, 0.212, 0.060),
    "left_eye_smplhf": (0.032, 0.318, 0.100),
}


@dataclass(frozen=True)
class Finger:
    """One finger of the left hand in the rest pose (the right hand is its mirror image).

    Attributes:
        name: "index", "middle", "pinky", "ring" or "thumb" (SMPL-X's joint name stem).
        base: position of joint 1 relative to the wrist (m).
        direction: direction of the finger (normalised when used).
        lengths: lengths of the three segments joint1->joint2->joint3->tip centre (m).
        radius: radius at joint 1 (m); segments taper towards the tip.
    """

    name: str
    base: tuple[float, float, float]
    direction: tuple[float, float, float]
    lengths: tuple[float, float, float]
    radius: float


def _fan(deg: float) -> tuple[float, float, float]:
    rad = np.deg2rad(deg)
    return (float(np.cos(rad)), 0.0, float(np.sin(rad)))


LEFT_FINGERS: tuple[Finger, ...] = (
    Finger("index", (0.094, -0.002, 0.026), _fan(9.0), (0.040, 0.024, 0.020), 0.0095),
    Finger("middle", (0.098, 0.000, 0.005), _fan(2.0), (0.043, 0.028, 0.022), 0.0095),
    Finger("pinky", (0.080, -0.004, -0.034), _fan(-15.0), (0.032, 0.020, 0.019), 0.0080),
    Finger("ring", (0.092, -0.002, -0.015), _fan(-6.0), (0.040, 0.026, 0.021), 0.0090),
    Finger("thumb", (0.022, -0.012, 0.028), (0.62, -0.15, 0.77), (0.038, 0.032, 0.024), 0.0125),
)
"""Fingers of the left hand in SMPL-X's joint order (index, middle, pinky, ring, thumb)."""

_TAPER = (1.0, 0.9, 0.82, 0.76)
"""Radius factor at joint 1, joint 2, joint 3 and the tip centre."""


def _mirror(p: np.ndarray) -> np.ndarray:
    return p * np.array([-1.0, 1.0, 1.0])


def _finger_points(finger: Finger, wrist: np.ndarray) -> np.ndarray:
    """Joint 1, 2, 3 and the tip centre of a left finger, (4, 3)."""
    direction = np.asarray(finger.direction) / np.linalg.norm(finger.direction)
    offsets = np.concatenate([[0.0], np.cumsum(finger.lengths)])
    return wrist + np.asarray(finger.base) + offsets[:, None] * direction


def rest_joints() -> np.ndarray:
    """Rest-pose positions of the 55 SMPL-X joints, (55, 3) float64, metres."""
    index = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}
    joints = np.full((len(SMPLX_JOINT_NAMES), 3), np.nan)
    for name, pos in _BODY_JOINTS.items():
        joints[index[name]] = pos
        if name.startswith("left_"):
            joints[index["right_" + name[5:]]] = _mirror(np.asarray(pos))
    wrist = np.asarray(_BODY_JOINTS["left_wrist"])
    for finger in LEFT_FINGERS:
        points = _finger_points(finger, wrist)
        for k in range(3):
            joints[index[f"left_{finger.name}{k + 1}"]] = points[k]
            joints[index[f"right_{finger.name}{k + 1}"]] = _mirror(points[k])
    assert not np.isnan(joints).any()
    return joints


@dataclass(frozen=True)
class Primitive:
    """A solid around (part of) one bone.

    Attributes:
        owner: index of the SMPL-X joint whose rotation moves this part (skinning).
        kind: "cone" (round cone: spheres of radii r0 at a and r1 at b joined by their tangent
            cone) or "ellipsoid" (axis-aligned, centre a, semi-axes radii).
        a, b: cone end points, or ellipsoid centre (a) and unused b.
        radii: (r0, r1, 0) for a cone, the three semi-axes for an ellipsoid (m).
        blend: smoothing width (m) of the smooth union with everything before it.
        floor: if set, the solid is cut flat below this height (soles).
    """

    owner: int
    kind: str
    a: tuple[float, float, float]
    b: tuple[float, float, float]
    radii: tuple[float, float, float]
    blend: float
    floor: float | None = None

    def mirrored(self, owner: int) -> Primitive:
        a, b = tuple(_mirror(np.asarray(self.a))), tuple(_mirror(np.asarray(self.b)))
        return Primitive(owner, self.kind, a, b, self.radii, self.blend, self.floor)

    def bounds(self, margin: float) -> tuple[np.ndarray, np.ndarray]:
        """Axis-aligned box (lo, hi) containing every point closer than margin to the solid."""
        a, b = np.asarray(self.a), np.asarray(self.b)
        if self.kind == "cone":
            r = max(self.radii[0], self.radii[1]) + margin
            return np.minimum(a, b) - r, np.maximum(a, b) + r
        r = np.asarray(self.radii) + margin
        return a - r, a + r

    def sdf(self, points: np.ndarray) -> np.ndarray:
        """Approximate signed distance (m, negative inside) of points (..., 3)."""
        return self.sdf_xyz(points[..., 0], points[..., 1], points[..., 2])

    def sdf_xyz(self, x: np.ndarray, y: np.ndarray, z: np.ndarray) -> np.ndarray:
        """Signed distance from coordinate arrays that broadcast together (e.g. grid axes)."""
        a = self.a
        qx, qy, qz = x - a[0], y - a[1], z - a[2]
        if self.kind == "cone":
            d = _round_cone_sdf(qx, qy, qz, np.subtract(self.b, a), *self.radii[:2])
        else:
            rx, ry, rz = self.radii
            k0 = np.sqrt((qx / rx) ** 2 + (qy / ry) ** 2 + (qz / rz) ** 2)
            k1 = np.sqrt((qx / rx**2) ** 2 + (qy / ry**2) ** 2 + (qz / rz**2) ** 2)
            d = k0 * (k0 - 1.0) / np.maximum(k1, 1e-12)
        if self.floor is not None:
            d = np.maximum(d, self.floor - y)
        return d


def _round_cone_sdf(qx, qy, qz, axis: np.ndarray, r0: float, r1: float) -> np.ndarray:
    """Round cone from a sphere (radius r0) at the origin to one (radius r1) at `axis`."""
    length = float(np.linalg.norm(axis))
    ux, uy, uz = axis / length
    x = qx * ux + qy * uy + qz * uz  # coordinate along the axis
    y = np.sqrt(np.maximum(qx * qx + qy * qy + qz * qz - x * x, 0.0))  # distance from the axis
    s = (r0 - r1) / length  # sine of the cone's half angle
    c = np.sqrt(1.0 - s * s)
    t = c * x - s * y  # position of the point's foot along the tangent line
    d_side = s * x + c * y - r0
    d_a = np.sqrt(x * x + y * y) - r0
    d_b = np.sqrt((x - length) ** 2 + y * y) - r1
    return np.where(t < 0.0, d_a, np.where(t > length * c, d_b, d_side))


def smooth_min(a: np.ndarray, b: np.ndarray, k: float) -> np.ndarray:
    """Polynomial smooth minimum: min(a, b) rounded over a band of width k."""
    h = np.maximum(k - np.abs(a - b), 0.0) / k
    return np.minimum(a, b) - h * h * k * 0.25


def body_primitives(joints: np.ndarray) -> tuple[Primitive, ...]:
    """The solids that make up the stand-in body, in union order, for rest joints (55, 3)."""
    j = {name: tuple(float(v) for v in joints[i]) for i, name in enumerate(SMPLX_JOINT_NAMES)}
    idx = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES)}

    def cone(owner, a, b, r0, r1, blend, floor=None):
        return Primitive(idx[owner], "cone", a, b, (r0, r1, 0.0), blend, floor)

    def ellipsoid(owner, centre, radii, blend, floor=None):
        return Primitive(idx[owner], "ellipsoid", centre, centre, radii, blend, floor)

    def add(v, dv):
        return tuple(float(x) for x in np.asarray(v) + np.asarray(dv))

    midline = [
        ellipsoid("pelvis", (0.0, -0.400, 0.000), (0.162, 0.125, 0.110), 0.06),
        ellipsoid("spine1", (0.0, -0.245, 0.008), (0.142, 0.150, 0.102), 0.08),
        ellipsoid("spine2", (0.0, -0.095, 0.014), (0.152, 0.150, 0.108), 0.08),
        ellipsoid("spine3", (0.0, 0.040, 0.000), (0.165, 0.125, 0.108), 0.08),
        cone("neck", (0.0, 0.120, -0.020), (0.0, 0.250, 0.000), 0.058, 0.050, 0.03),
        ellipsoid("head", (0.0, 0.325, 0.025), (0.076, 0.108, 0.098), 0.03),
        ellipsoid("jaw", (0.0, 0.238, 0.062), (0.054, 0.052, 0.058), 0.03),
        cone("head", (0.0, 0.322, 0.112), (0.0, 0.279, 0.131), 0.008, 0.011, 0.010),  # nose
    ]
    left = [
        ellipsoid("head", (0.078, 0.305, 0.012), (0.014, 0.030, 0.018), 0.008),  # ear
        ellipsoid("pelvis", (0.068, -0.455, -0.045), (0.080, 0.085, 0.075), 0.04),
        cone("left_collar", (0.020, 0.110, -0.015), add(j["left_shoulder"], (-0.015, 0.005, 0.0)),
             0.055, 0.052, 0.04),
        ellipsoid("left_shoulder", add(j["left_shoulder"], (0.010, 0.005, 0.0)),
                  (0.070, 0.058, 0.058), 0.03),
        cone("left_shoulder", j["left_shoulder"], j["left_elbow"], 0.050, 0.038, 0.03),
        cone("left_elbow", j["left_elbow"], j["left_wrist"], 0.037, 0.026, 0.02),
        ellipsoid("left_wrist", add(j["left_wrist"], (0.050, -0.004, 0.0)),
                  (0.058, 0.017, 0.043), 0.015),
        cone("left_hip", j["left_hip"], j["left_knee"], 0.085, 0.052, 0.04),
        cone("left_knee", j["left_knee"], j["left_ankle"], 0.050, 0.032, 0.03),
        ellipsoid("left_knee", (0.100, -0.920, -0.025), (0.050, 0.110, 0.052), 0.03),
        ellipsoid("left_ankle", (0.097, -1.262, 0.020), (0.044, 0.050, 0.115), 0.025, FLOOR_Y),
        ellipsoid("left_foot", (0.117, -1.277, 0.112), (0.046, 0.024, 0.058), 0.02, FLOOR_Y),
    ]  # fmt: skip
    left_fingers = []
    wrist = np.asarray(j["left_wrist"])
    for finger in LEFT_FINGERS:
        points = _finger_points(finger, wrist)
        for k in range(3):
            owner = f"left_{finger.name}{k + 1}"
            r0, r1 = finger.radius * _TAPER[k], finger.radius * _TAPER[k + 1]
            left_fingers.append(cone(owner, tuple(points[k]), tuple(points[k + 1]), r0, r1, 0.004))
    # Small, sharply blended parts last (see _standin_mesh._grid_sdf).
    ordered = midline + left + _mirrored(left) + left_fingers + _mirrored(left_fingers)
    return tuple(ordered)


def _mirrored(primitives: list[Primitive]) -> list[Primitive]:
    return [p.mirrored(_mirror_joint(p.owner)) for p in primitives]


def _mirror_joint(index: int) -> int:
    name = SMPLX_JOINT_NAMES[index]
    if name.startswith("left_"):
        return SMPLX_JOINT_NAMES.index("right_" + name[5:])
    return index
