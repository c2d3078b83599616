"""BVH parsing and forward kinematics, motion importers, SMPL-X fitting."""

from __future__ import annotations

import itertools
import warnings
from pathlib import Path

import numpy as np
import pytest
from scipy.spatial.transform import Rotation

from drpose.motion.bvh import (
    BvhError,
    BvhWarning,
    detect_unit_scale,
    format_bvh,
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


# --- importers -------------------------------------------------------------------------------

import torch  # noqa: E402

from drpose.motion.body_joints import BodyJoints  # noqa: E402
from drpose.motion.load import (  # noqa: E402
    MOTIONX_LAYOUT,
    default_pose_sequences,
    load_amass,
    load_motion,
    load_motionx,
    pelvis_rest_position,
)
from drpose.motion.sequence import R_ZUP_TO_YUP, PoseSequence, concatenate  # noqa: E402


@pytest.fixture(scope="module")
def smplx_model():
    from drpose.body import StandInModelWarning, load_smplx

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StandInModelWarning)
        return load_smplx()


def test_motionx_columns(tmp_path):
    rng = np.random.default_rng(0)
    rows = rng.normal(size=(7, 322)).astype(np.float32)
    np.save(tmp_path / "clip.npy", rows)
    sequence = load_motion(tmp_path / "clip.npy")
    assert len(sequence) == 7 and sequence.fps == 30.0
    for name, (start, stop) in MOTIONX_LAYOUT.items():
        if name != "face_shape":
            np.testing.assert_array_equal(getattr(sequence, name), rows[:, start:stop])
    with pytest.raises(ValueError, match=r"\(T, 322\)"):
        np.save(tmp_path / "bad.npy", rows[:, :300])
        load_motionx(tmp_path / "bad.npy")


@pytest.mark.parametrize("width", [156, 165])
def test_amass_z_up_becomes_the_same_body_y_up(tmp_path, smplx_model, width):
    from drpose.body import posed_body

    rng = np.random.default_rng(width)
    frames = 5
    poses = rng.normal(scale=0.4, size=(frames, width))
    trans = rng.normal(size=(frames, 3))
    betas = rng.normal(size=16)
    np.savez(tmp_path / "amass.npz", poses=poses, trans=trans, betas=betas, mocap_framerate=120.0)
    sequence = load_amass(tmp_path / "amass.npz")
    assert sequence.fps == 120.0
    np.testing.assert_allclose(sequence.body_pose, poses[:, 3:66], atol=1e-6)
    # Independent check: pose both with smplx; the loaded body is the z-up body rotated.
    shape = torch.from_numpy(sequence.betas)
    z_up = posed_body(
        smplx_model, torch.tensor(poses[:, 3:66], dtype=torch.float32),
        torch.tensor(poses[:, :3], dtype=torch.float32), betas=shape,
        transl=torch.tensor(trans, dtype=torch.float32),
    ).joints[:, :22].numpy()  # fmt: skip
    y_up = posed_body(
        smplx_model, torch.from_numpy(sequence.body_pose),
        torch.from_numpy(sequence.global_orient), betas=shape,
        transl=torch.from_numpy(sequence.transl),
    ).joints[:, :22].numpy()  # fmt: skip
    np.testing.assert_allclose(y_up, z_up @ R_ZUP_TO_YUP.T, atol=2e-5)
    if width == 165:
        np.testing.assert_allclose(sequence.betas[0], betas[:10], atol=1e-6)
    else:
        assert not sequence.betas.any()  # SMPL-H betas do not transfer


def test_pelvis_rest_position_matches_the_model(smplx_model):
    from drpose.body import posed_body

    betas = np.random.default_rng(1).normal(size=(3, 10)).astype(np.float32)
    rest = posed_body(smplx_model, torch.zeros(3, 63), betas=torch.from_numpy(betas))
    joints = rest.joints[:, 0].numpy()
    np.testing.assert_allclose(pelvis_rest_position(betas), joints, atol=1e-5)


def test_pose_sequence_round_trip_take_concatenate(tmp_path):
    (clip, *_) = default_pose_sequences()
    assert len(clip) == 300 and clip.fps == pytest.approx(30.0, rel=1e-3)
    part = clip.take(slice(10, 20))
    np.testing.assert_array_equal(part.frame_ids, clip.frame_ids[10:20])
    part.save(tmp_path / "part.npz")
    loaded = load_motion(tmp_path / "part.npz")  # a saved PoseSequence, not AMASS
    for name in ("global_orient", "body_pose", "transl", "betas", "frame_ids"):
        np.testing.assert_array_equal(getattr(loaded, name), getattr(part, name))
    merged, clip_ids = concatenate([part, clip.take(slice(0, 5))])
    assert len(merged) == 15 and clip_ids.tolist() == [0] * 10 + [1] * 5
    with pytest.raises(ValueError, match=r"body_pose must have shape \(3, 63\)"):
        PoseSequence(np.zeros((3, 3)), np.zeros((3, 60)), np.zeros((3, 3)), np.zeros(10), 30, "x")


# --- fitting ---------------------------------------------------------------------------------

from drpose.motion.bvh_fit import FitConfig, fit_bvh, fit_joints  # noqa: E402


def test_body_joints_equal_smplx_forward(smplx_model):
    from drpose.body import posed_body

    generator = torch.Generator().manual_seed(0)
    orient, pose = torch.randn(3, 3, generator=generator), torch.randn(3, 63, generator=generator)
    transl = torch.randn(3, 3, generator=generator)
    expected = posed_body(smplx_model, pose * 0.3, orient, transl=transl).joints[:, :22]
    actual = BodyJoints(smplx_model)(orient, pose * 0.3, transl)
    torch.testing.assert_close(actual, expected, atol=2e-6, rtol=0)


def known_poses(frames: int, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Smooth, plausible SMPL-X poses: random amplitudes on a slow sine, moderate size."""
    generator = torch.Generator().manual_seed(seed)
    phase = torch.linspace(0, 1, frames)[:, None]
    amplitude = torch.randn(1, 63, generator=generator) * 0.35
    body_pose = amplitude * torch.sin(3 * phase + torch.rand(1, 63, generator=generator))
    orient = torch.tensor([[0.2, 1.0, -0.1]]) * torch.cos(phase)
    transl = torch.cat([phase, 0.1 * phase, -phase], dim=1)
    return orient, body_pose, transl


def test_fit_recovers_known_joints(smplx_model):
    body = BodyJoints(smplx_model)
    orient, pose, transl = known_poses(16)
    targets = body(orient, pose, transl)
    fitted = fit_joints(body, targets, list(range(22)), torch.ones(22), config=FitConfig())
    joints = body(fitted[0], fitted[1], fitted[2])
    error_mm = (joints - targets).norm(dim=-1) * 1000
    assert error_mm.mean() < 5.0 and error_mm.max() < 25.0


def smplx_bvh(body: BodyJoints, orient, pose, transl, order: str = "ZYX") -> str:
    """The SMPL-X body skeleton (joints 0-21, rest offsets) as a BVH in centimetres, with
    channel angles from the given axis-angle poses."""
    from drpose.body.joints import SMPLX_JOINT_NAMES, SMPLX_PARENTS

    rest = body.rest_joints.numpy() * 100
    parents = list(SMPLX_PARENTS[:22])
    offsets = rest - rest[[max(p, 0) for p in parents]]
    rotations = torch.cat([orient, pose], dim=1).reshape(-1, 3).numpy()
    angles = Rotation.from_rotvec(rotations).as_euler(order, degrees=True)
    return format_bvh(
        list(SMPLX_JOINT_NAMES[:22]), parents, offsets, transl.numpy() * 100 + rest[0],
        angles.reshape(len(orient), 22, 3), rotation_order=order,
    )  # fmt: skip


def test_fit_bvh_end_to_end_recovers_a_known_smplx_motion(tmp_path, smplx_model):
    from drpose.body.joints import SMPLX_JOINT_NAMES

    body = BodyJoints(smplx_model)
    orient, pose, transl = known_poses(24, seed=3)
    path = write(tmp_path, smplx_bvh(body, orient, pose, transl))
    joint_map = [(name, name, 1.0) for name in SMPLX_JOINT_NAMES[:22]]
    truth = body(orient, pose, transl)
    bvh = parse_bvh(path)
    positions = forward_kinematics(bvh, scale=0.01)[
        :, [bvh.index(n) for n in SMPLX_JOINT_NAMES[:22]]
    ]
    np.testing.assert_allclose(positions, truth.numpy(), atol=1e-5)
    sequence, report = fit_bvh(path, joint_map=joint_map, body=body)
    assert report.unit == "cm" and report.scale == pytest.approx(1.0, abs=0.01)
    assert report.errors_mm.shape == (24, 22) and report.mean_mm < 6.0
    fitted = body(*(torch.from_numpy(a) for a in (sequence.global_orient, sequence.body_pose,
                                                   sequence.transl)))  # fmt: skip
    assert ((fitted - truth * report.scale).norm(dim=-1) * 1000).mean() < 6.0
    np.testing.assert_allclose(report.errors_mm.mean(), report.mean_mm)


@pytest.mark.skipif(not ASSIMP_BVH.is_dir(), reason="apt package assimp-testmodels is absent")
@pytest.mark.parametrize(("clip", "skeleton"), [("01_01", "cmu"), ("Boxing_Toes", "biovision")])
def test_fit_real_bvh_limbs_within_centimetres(clip, skeleton):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sequence, report = fit_bvh(ASSIMP_BVH / f"{clip}.bvh", frame_step=8, max_frames=48)
    assert report.skeleton == skeleton and len(sequence) == 48
    limbs = [v for k, v in report.per_joint_mm.items() if any(
        part in k for part in ("knee", "ankle", "elbow", "wrist"))]  # fmt: skip
    # Rigs place joints differently; limbs still land within a few centimetres.
    assert np.mean(limbs) < 45.0 and report.mean_mm < 60.0


def test_kabsch_recovers_a_rotation():
    from drpose.motion.bvh_fit import kabsch

    generator = torch.Generator().manual_seed(4)
    source = torch.randn(6, 3, generator=generator, dtype=torch.float64)
    rotation = torch.from_numpy(Rotation.random(2, random_state=4).as_matrix())
    target = source @ rotation.transpose(1, 2) + torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    torch.testing.assert_close(kabsch(source, target, torch.ones(6, dtype=torch.float64)), rotation)


def test_skeleton_maps_are_detected_by_joint_names():
    from drpose.motion.bvh_skeletons import SKELETON_MAPS, match_skeleton

    for name, pairs in SKELETON_MAPS.items():
        prefix = "mixamorig:" if name == "mixamo" else ""
        names = ["Extra", *(prefix + bvh for bvh, _, _ in pairs)]
        detected, index = match_skeleton(names)
        assert detected == name and min(index.values()) == 1
    with pytest.raises(ValueError, match=r"cmu: missing .*Neck1.*pass joint_map="):
        match_skeleton(["Hips", "Spine", "Head"])
