"""BVH parsing and forward kinematics, motion importers, SMPL-X fitting."""

from __future__ import annotations

import itertools
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from drpose.data.bvh import (
    BvhError,
    BvhWarning,
    detect_unit_scale,
    forward_kinematics,
    parse_bvh,
)

ASSIMP_BVH = Path("/usr/share/assimp/models/BVH")


def chain_bvh(order: str, frames: np.ndarray, *, header_frames: int | None = None) -> str:
    """A 3-joint chain (root with 6 channels, one child, an end site) in rotation order ``order``
    (e.g. "ZXY"); frames: (T, 9) values [xyz position, root angles, child angles] in that order."""
    rotation = " ".join(f"{axis}rotation" for axis in order)
    rows = "\n".join(" ".join(f"{v:.6f}" for v in row) for row in frames)
    count = len(frames) if header_frames is None else header_frames
    return f"""HIERARCHY
ROOT Hips
{{
  OFFSET 0 0 0
  CHANNELS 6 Xposition Yposition Zposition {rotation}
  JOINT Spine
  {{
    OFFSET 0 10 0
    CHANNELS 3 {rotation}
    End Site
    {{
      OFFSET 0 5 2
    }}
  }}
}}
MOTION
Frames: {count}
Frame Time: 0.0333333
{rows}
"""


def write(tmp_path: Path, text: str, name: str = "clip.bvh") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


@pytest.mark.parametrize("order", ["".join(p) for p in itertools.permutations("XYZ")])
def test_forward_kinematics_matches_scipy_for_every_rotation_order(tmp_path, order):
    rng = np.random.default_rng(len(order) + ord(order[0]))
    values = [rng.uniform(-5, 5, (4, 3)), rng.uniform(-170, 170, (4, 6))]
    frames = np.round(np.concatenate(values, axis=1), 6)  # as written to the file
    bvh = parse_bvh(write(tmp_path, chain_bvh(order, frames)))
    assert bvh.names == ["Hips", "Spine", "Spine_End"]
    assert bvh.parents.tolist() == [-1, 0, 1]
    positions = forward_kinematics(bvh)
    # Independent: scipy intrinsic Euler angles in channel order = product in listed order.
    root = Rotation.from_euler(order, frames[:, 3:6], degrees=True)
    child = root * Rotation.from_euler(order, frames[:, 6:9], degrees=True)
    spine = frames[:, :3] + root.apply([0, 10, 0])
    end = spine + child.apply([0, 5, 2])
    np.testing.assert_allclose(positions[:, 0], frames[:, :3], atol=1e-9)
    np.testing.assert_allclose(positions[:, 1], spine, atol=1e-9)
    np.testing.assert_allclose(positions[:, 2], end, atol=1e-9)


def test_forward_kinematics_known_answer(tmp_path):
    # Root at (1, 2, 3) turned 90 degrees about z: the child's +y offset points to -x.
    frames = np.array([[1, 2, 3, 90, 0, 0, 0, 0, 0]], dtype=float)
    positions = forward_kinematics(parse_bvh(write(tmp_path, chain_bvh("ZXY", frames))))
    np.testing.assert_allclose(positions[0, 1], [1 - 10, 2, 3], atol=1e-12)
    np.testing.assert_allclose(positions[0, 2], [-14, 2, 5], atol=1e-12)
    np.testing.assert_allclose(
        forward_kinematics(parse_bvh(write(tmp_path, chain_bvh("ZXY", frames))), scale=0.01),
        positions * 0.01,
    )


def test_braces_on_keyword_lines_and_namespaced_names(tmp_path):
    text = (
        "HIERARCHY\nROOT mixamorig:Hips {\n OFFSET 0 0 0\n CHANNELS 6 Xposition Yposition "
        "Zposition Yrotation Xrotation Zrotation\n JOINT mixamorig:Spine {\n  OFFSET 0 1 0\n"
        "  CHANNELS 3 Yrotation Xrotation Zrotation\n  End Site { OFFSET 0 1 0 }\n }\n}\n"
        "MOTION\nFrames: 1\nFrame Time: 0.04\n0 0 0 0 0 0 0 0 0\n"
    )
    bvh = parse_bvh(write(tmp_path, text))
    assert bvh.names == ["mixamorig:Hips", "mixamorig:Spine", "mixamorig:Spine_End"]
    assert bvh.fps == pytest.approx(25.0)


def test_truncated_motion_row_names_the_line(tmp_path):
    frames = np.zeros((3, 9))
    text = chain_bvh("ZXY", frames)
    truncated = text[: text.rstrip().rfind(" ")]  # cut the last row short
    last_line = len(truncated.splitlines())
    with pytest.raises(BvhError, match=rf"line {last_line}: expected 9 .*found 8 .*truncated"):
        parse_bvh(write(tmp_path, truncated))


def test_truncated_hierarchy_names_the_line(tmp_path):
    text = chain_bvh("ZXY", np.zeros((1, 9)))
    cut = "\n".join(text.splitlines()[:9])  # ends inside joint Spine, no MOTION
    with pytest.raises(BvhError, match="line 9: no 'MOTION' section"):
        parse_bvh(write(tmp_path, cut))
    missing_brace = text.replace("    }\n  }\n}", "    }\n  }")  # root never closed
    line = missing_brace.splitlines().index("MOTION") + 1
    with pytest.raises(BvhError, match=rf"line {line}: unexpected end of hierarchy"):
        parse_bvh(write(tmp_path, missing_brace))


@pytest.mark.parametrize(
    ("old", "new", "line", "message"),
    [
        ("OFFSET 0 10 0", "OFFSET 0 ten 0", 8, "expected a number for OFFSET y"),
        ("CHANNELS 3 Z", "CHANNELS 3 Wrotation Z", 9, "unknown channel 'Wrotation'"),
        ("Frame Time: 0.0333333", "Frame Time: -1", 18, "Frame Time must be positive"),
        ("0.000000 0.000000 0.000000\n", "0.000000 nan 0.000000\n", 19, "non-finite"),
    ],
)
def test_malformed_files_name_the_line(tmp_path, old, new, line, message):
    text = chain_bvh("ZXY", np.zeros((2, 9))).replace(old, new, 1)
    with pytest.raises(BvhError, match=rf"line {line}: .*{message}"):
        parse_bvh(write(tmp_path, text))


def test_wrong_frame_count_warns_and_uses_the_data(tmp_path):
    frames = np.arange(5 * 9, dtype=float).reshape(5, 9)
    with pytest.warns(BvhWarning, match="Frames: 7 but 5 data rows"):
        bvh = parse_bvh(write(tmp_path, chain_bvh("ZXY", frames, header_frames=7)))
    np.testing.assert_allclose(bvh.values, frames, atol=1e-6)


def test_unit_detection():
    text_cm = chain_bvh("ZXY", np.zeros((1, 9))).replace("0 10 0", "0 150 0")
    assert detect_unit_scale(parse_bvh("cm", text=text_cm)) == (0.01, "cm")
    text_m = text_cm.replace("0 150 0", "0 1.5 0").replace("0 5 2", "0 0.2 0")
    assert detect_unit_scale(parse_bvh("m", text=text_m)) == (1.0, "m")


@pytest.mark.skipif(not ASSIMP_BVH.is_dir(), reason="apt package assimp-testmodels is absent")
def test_real_files_from_assimp_testmodels():
    cmu = parse_bvh(ASSIMP_BVH / "01_01.bvh")
    assert cmu.num_frames == 2752 and cmu.fps == pytest.approx(120, rel=1e-4)
    assert sum(not j.is_end_site for j in cmu.joints) == 31
    assert detect_unit_scale(cmu)[1] == "cmu"
    with pytest.warns(BvhWarning, match="Frames: 3069 but 3070"):
        boxing = parse_bvh(ASSIMP_BVH / "Boxing_Toes.bvh")
    assert sum(not j.is_end_site for j in boxing.joints) == 21
    assert detect_unit_scale(boxing)[1] == "cm"
    positions = forward_kinematics(boxing, scale=0.01)
    # A standing performer in centimetres: head above hips always, ankles near the floor mostly.
    hips, head, ankle = (boxing.index(n) for n in ("Hips", "Head", "LeftAnkle"))
    assert np.all(positions[:, head, 1] > positions[:, hips, 1])
    assert 0.8 < np.median(positions[:, hips, 1]) < 1.1
    assert np.median(positions[:, ankle, 1]) < 0.15
