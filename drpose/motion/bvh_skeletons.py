"""Joint correspondences from common BVH skeletons to SMPL-X joints (data, not code).

Each map lists ``(BVH joint name, SMPL-X joint name, weight)``. Names are matched after dropping
a namespace prefix (``mixamorig:Hips`` -> ``Hips``), case-insensitively. Weights are the relative
importance in the fit: 1 for limb joints, whose placement is the same on every skeleton, 0.5 for
spine, neck, head, collar and toe joints, which each rig places differently along the body. BVH
joints left out either coincide with a mapped joint (CMU's ``LHipJoint``, ``LowerBack``,
``Neck``, ``LeftShoulder`` sit at zero offset from their parent) or have no SMPL-X counterpart
(fingers). SMPL-X joints left out (collars on CMU, spine2 on CMU and Biovision) are set by the
fit's pose regulariser.

Maps:
- ``cmu``: the cgspeed.com BVH conversion of the CMU database (31 joints; Debian
  ``assimp-testmodels``: ``01_01.bvh``, ``01_03.bvh``).
- ``biovision``: the classic Biovision/MotionBuilder naming (Ab, Chest, LeftCollar, LeftElbow,
  LeftWrist, LeftHip, LeftKnee, LeftAnkle, LeftToes; 21 joints in ``Boxing_Toes.bvh``).
- ``mixamo``: Adobe Mixamo rigs (``mixamorig:`` prefix, Spine/Spine1/Spine2, LeftArm/ForeArm).
"""

from __future__ import annotations

from collections.abc import Sequence

JointMap = tuple[tuple[str, str, float], ...]


def _both_sides(pairs: Sequence[tuple[str, str, float]]) -> list[tuple[str, str, float]]:
    """Expand ``{side}``/``{s}`` templates into the left and right entries."""
    out = []
    for bvh, smplx, weight in pairs:
        if "{" not in bvh:
            out.append((bvh, smplx, weight))
            continue
        for side, short in (("Left", "L"), ("Right", "R")):
            out.append((bvh.format(side=side, s=short), smplx.format(side=side.lower()), weight))
    return out


SKELETON_MAPS: dict[str, JointMap] = {
    "cmu": tuple(
        _both_sides(
            [
                ("Hips", "pelvis", 1.0),
                ("Spine", "spine1", 0.5),
                ("Spine1", "spine3", 0.5),
                ("Neck1", "neck", 0.5),
                ("Head", "head", 0.5),
                ("{side}UpLeg", "{side}_hip", 1.0),
                ("{side}Leg", "{side}_knee", 1.0),
                ("{side}Foot", "{side}_ankle", 1.0),
                ("{side}ToeBase", "{side}_foot", 0.5),
                ("{side}Arm", "{side}_shoulder", 1.0),
                ("{side}ForeArm", "{side}_elbow", 1.0),
                ("{side}Hand", "{side}_wrist", 1.0),
            ]
        )
    ),
    "biovision": tuple(
        _both_sides(
            [
                ("Hips", "pelvis", 1.0),
                ("Ab", "spine1", 0.5),
                ("Chest", "spine3", 0.5),
                ("Neck", "neck", 0.5),
                ("Head", "head", 0.5),
                ("{side}Hip", "{side}_hip", 1.0),
                ("{side}Knee", "{side}_knee", 1.0),
                ("{side}Ankle", "{side}_ankle", 1.0),
                ("{side}Toes", "{side}_foot", 0.5),
                ("{side}Shoulder", "{side}_shoulder", 1.0),
                ("{side}Elbow", "{side}_elbow", 1.0),
                ("{side}Wrist", "{side}_wrist", 1.0),
            ]
        )
    ),
    "mixamo": tuple(
        _both_sides(
            [
                ("Hips", "pelvis", 1.0),
                ("Spine", "spine1", 0.5),
                ("Spine1", "spine2", 0.5),
                ("Spine2", "spine3", 0.5),
                ("Neck", "neck", 0.5),
                ("Head", "head", 0.5),
                ("{side}Shoulder", "{side}_collar", 0.5),
                ("{side}UpLeg", "{side}_hip", 1.0),
                ("{side}Leg", "{side}_knee", 1.0),
                ("{side}Foot", "{side}_ankle", 1.0),
                ("{side}ToeBase", "{side}_foot", 0.5),
                ("{side}Arm", "{side}_shoulder", 1.0),
                ("{side}ForeArm", "{side}_elbow", 1.0),
                ("{side}Hand", "{side}_wrist", 1.0),
            ]
        )
    ),
}


def normalise_name(name: str) -> str:
    """Drop a ``namespace:`` prefix and case: ``mixamorig:LeftArm`` -> ``leftarm``."""
    return name.rsplit(":", 1)[-1].strip().lower()


def match_skeleton(names: Sequence[str]) -> tuple[str, dict[str, int]]:
    """Pick the map whose every BVH joint is present in ``names``.

    Returns:
        (map name, {BVH joint name as in the map: index into ``names``}).

    Raises:
        ValueError: no map fits; lists what each map misses and how to pass a custom map.
    """
    index = {normalise_name(n): i for i, n in enumerate(names)}
    misses = {}
    for map_name, pairs in SKELETON_MAPS.items():
        missing = [bvh for bvh, _, _ in pairs if normalise_name(bvh) not in index]
        if not missing:
            return map_name, {bvh: index[normalise_name(bvh)] for bvh, _, _ in pairs}
        misses[map_name] = missing
    detail = "; ".join(f"{m}: missing {', '.join(miss)}" for m, miss in misses.items())
    raise ValueError(
        f"no known skeleton map fits joints {list(names)} ({detail}); pass joint_map="
        "[(bvh_name, smplx_name, weight), ...] to fit_bvh"
    )
