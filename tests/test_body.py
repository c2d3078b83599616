"""drpose.body: the stand-in SMPL-X file loads in the unmodified smplx package and behaves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import smplx
import torch
import trimesh
from smplx.joint_names import JOINT_NAMES
from smplx.vertex_ids import vertex_ids as VERTEX_IDS

from drpose.body import (
    COCO17,
    POSESCORE_JOINTS,
    SMPLX_JOINT_NAMES,
    SMPLX_PARENTS,
    load_smplx,
    posed_body,
    resolve_model_dir,
    standin_model_dir,
)
from drpose.body import model as body_model
from drpose.body.joints import NUM_OUTPUT_JOINTS, SMPLX_VERTEX_JOINT_NAMES
from drpose.body.standin import MODEL_FILE, NUM_SURFACE_VERTICES, SMPLX_VERTEX_IDS

NAME = {n: i for i, n in enumerate(SMPLX_JOINT_NAMES)}


@pytest.fixture(scope="session")
def standin_dir() -> Path:
    return standin_model_dir()


@pytest.fixture(scope="session")
def npz(standin_dir):
    with np.load(standin_dir / MODEL_FILE) as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def body(standin_dir):
    return load_smplx(standin_dir, flat_hand_mean=True)


def _pose(**joint_rotations) -> torch.Tensor:
    """(1, 63) body pose with the given joints (by name) rotated by axis-angle vectors."""
    pose = torch.zeros(1, 21, 3)
    for name, aa in joint_rotations.items():
        pose[0, NAME[name] - 1] = torch.tensor(aa, dtype=torch.float32)
    return pose.reshape(1, 63)


def test_unmodified_smplx_loads_the_standin(standin_dir):
    model = smplx.create(str(standin_dir), model_type="smplx", gender="neutral", ext="npz",
                         num_betas=300, num_expression_coeffs=100, use_pca=True,
                         num_pca_comps=12)  # fmt: skip
    assert model.num_betas == 300 and model.num_expression_coeffs == 100
    out = model(return_verts=True)
    assert out.vertices.shape == (1, 10475, 3)
    assert out.joints.shape == (1, NUM_OUTPUT_JOINTS, 3) == (1, 127, 3)
    assert model.faces.shape == (20908, 3)
    assert model.J_regressor.shape == (55, 10475)
    assert model.parents.tolist() == list(SMPLX_PARENTS)
    assert torch.isfinite(out.vertices).all() and torch.isfinite(out.joints).all()
    # The yaw-dependent jaw contour (dynamic landmarks) works too: 17 more points on the jaw.
    contour = smplx.create(str(standin_dir), model_type="smplx", use_face_contour=True)
    for yaw in (-0.6, 0.0, 0.6):
        pose = _pose(neck=(0.0, yaw, 0.0))
        joints = contour(body_pose=pose).joints[0].detach().numpy()
        assert joints.shape == (144, 3)
        jaw_line = joints[127:]
        assert (jaw_line[:, 1] < joints[NAME["head"], 1] + 0.05).all()
        assert (jaw_line[:, 1] > joints[NAME["neck"], 1]).all()


def test_model_file_fields(npz):
    assert npz["shapedirs"].shape == (10475, 3, 400)
    assert npz["posedirs"].shape == (10475, 3, 486)
    assert npz["weights"].shape == (10475, 55)
    np.testing.assert_allclose(npz["weights"].sum(1), 1.0, atol=1e-5)
    assert (npz["weights"] >= 0).all() and ((npz["weights"] > 0).sum(1) <= 4).all()
    np.testing.assert_allclose(npz["J_regressor"].sum(1), 1.0, atol=1e-5)
    for side in "lr":
        comp = npz[f"hands_components{side}"].astype(np.float64)
        np.testing.assert_allclose(comp @ comp.T, np.eye(45), atol=1e-5)
        assert npz[f"hands_mean{side}"].shape == (45,)
    assert npz["lmk_faces_idx"].shape == (51,) and npz["lmk_bary_coords"].shape == (51, 3)
    assert npz["dynamic_lmk_faces_idx"].shape == (79, 17)
    assert npz["dynamic_lmk_bary_coords"].shape == (79, 17, 3)
    for bary in (npz["lmk_bary_coords"], npz["dynamic_lmk_bary_coords"]):
        assert (bary >= -1e-6).all()
        np.testing.assert_allclose(bary.sum(-1), 1.0, atol=1e-5)
    assert npz["lmk_faces_idx"].max() < 20908 and npz["dynamic_lmk_faces_idx"].max() < 20908


def test_mesh_is_watertight_genus0_with_documented_unreferenced_copies(npz):
    verts, faces = npz["v_template"], npz["f"].astype(np.int64)
    # Invariant: faces use exactly vertices 0..10455 and close a genus-0 surface.
    assert np.array_equal(np.unique(faces), np.arange(NUM_SURFACE_VERTICES))
    mesh = trimesh.Trimesh(verts[:NUM_SURFACE_VERTICES], faces, process=False)
    assert mesh.is_watertight and mesh.is_winding_consistent
    assert mesh.euler_number == 2 and len(mesh.split(only_watertight=False)) == 1
    assert 0.05 < mesh.volume < 0.1  # outward-facing, an adult's volume in m^3
    # The 19 unreferenced vertices are exact copies of vertices 0..18.
    copies = np.arange(NUM_SURFACE_VERTICES, 10475)
    for key in ("v_template", "weights", "shapedirs", "posedirs"):
        np.testing.assert_array_equal(npz[key][copies], npz[key][copies - NUM_SURFACE_VERTICES])
    assert (npz["J_regressor"][:, copies] == 0).all()


def test_rest_joints_are_a_plausible_symmetric_adult(body):
    out = posed_body(body, torch.zeros(1, 63))
    verts, joints = out.vertices[0].numpy(), out.joints[0].numpy()
    height = verts[:, 1].max() - verts[:, 1].min()
    assert 1.6 < height < 1.9
    # The regressor reproduces the rest skeleton; left and right mirror each other.
    for name in SMPLX_JOINT_NAMES:
        if name.startswith("left_"):
            left, right = joints[NAME[name]], joints[NAME["right_" + name[5:]]]
            np.testing.assert_allclose(left * [-1, 1, 1], right, atol=1e-5)
            assert left[0] > 0  # subject's left is +x
    y = {n: joints[NAME[n], 1] for n in SMPLX_JOINT_NAMES}
    assert y["head"] > y["neck"] > y["spine3"] > y["spine2"] > y["spine1"] > y["pelvis"]
    assert y["pelvis"] > y["left_hip"] > y["left_knee"] > y["left_ankle"] > y["left_foot"]
    assert verts[:, 1].min() < y["left_foot"] < verts[:, 1].min() + 0.06
    # T-pose: arms horizontal, along x.
    for part in ("shoulder", "elbow", "wrist"):
        assert abs(y[f"left_{part}"] - y["left_shoulder"]) < 0.05
    assert joints[NAME["left_wrist"], 0] > joints[NAME["left_elbow"], 0] > 0.3
    # Every skeleton joint lies inside the body's bounding box.
    assert (joints[:55] > verts.min(0)).all() and (joints[:55] < verts.max(0)).all()


def test_elbow_flexion_moves_the_forearm_and_blends_the_skin(body, npz):
    rest = posed_body(body, torch.zeros(1, 63))
    bent = posed_body(body, _pose(left_elbow=(0.0, -np.pi / 2, 0.0)))
    d_joints = (bent.joints - rest.joints)[0].norm(dim=-1)
    assert d_joints[NAME["left_wrist"]] > 0.2  # the forearm (26 cm) swings round
    assert d_joints[NAME["left_shoulder"]] < 1e-6 and d_joints[NAME["right_wrist"]] < 1e-6
    moved = (bent.vertices - rest.vertices)[0].norm(dim=-1).numpy()
    weight = npz["weights"][:, NAME["left_elbow"]]
    near = np.linalg.norm(npz["v_template"] - rest.joints[0, NAME["left_elbow"]].numpy(), axis=1)
    near_elbow = near < 0.06
    # Skin around the elbow takes part of the rotation: weights between 0 and 1 there.
    partial = near_elbow & (weight > 0.1) & (weight < 0.9)
    assert partial.sum() >= 20
    full = moved[(weight > 0.999)].max()
    assert 0.0 < np.median(moved[partial]) < full
    # No triangle is torn: edges stretch by a bounded factor.
    faces = npz["f"].astype(np.int64)
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])

    def lengths(v: torch.Tensor) -> np.ndarray:
        return np.linalg.norm(v[0].numpy()[edges[:, 0]] - v[0].numpy()[edges[:, 1]], axis=1)

    stretch = lengths(bent.vertices) / lengths(rest.vertices)
    assert stretch.max() < 3.0


def test_coco_keypoints_sit_where_coco_puts_them(body):
    out = posed_body(body, torch.zeros(1, 63))
    joints, verts = out.joints[0].numpy(), out.vertices[0].numpy()
    kp = {name: joints[i] for name, i in zip(COCO17.names, COCO17.indices, strict=True)}
    head, neck = joints[NAME["head"]], joints[NAME["neck"]]
    top = verts[:, 1].max()
    assert kp["nose"][2] > head[2] + 0.08  # in front of the head
    assert neck[1] < kp["nose"][1] < top and abs(kp["nose"][0]) < 0.01
    assert kp["nose"][2] >= verts[verts[:, 1] > neck[1], 2].max() - 1e-6  # the nose tip
    for side, sign in (("left", 1), ("right", -1)):
        eye, ear = kp[f"{side}_eye"], kp[f"{side}_ear"]
        assert sign * eye[0] > 0.01 and eye[1] > kp["nose"][1] and eye[2] > head[2] + 0.05
        assert sign * ear[0] > sign * eye[0] + 0.03 and abs(ear[2] - head[2]) < 0.06
        assert kp[f"{side}_ankle"][1] < verts[:, 1].min() + 0.15
    # Feet and hands: toes in front of heels, fingertips at the ends of the arms.
    vj = {name: joints[55 + i] for i, name in enumerate(SMPLX_VERTEX_JOINT_NAMES)}
    for side in ("left", "right"):
        assert vj[f"{side}_big_toe"][2] > vj[f"{side}_heel"][2] + 0.2
        assert vj[f"{side}_heel"][1] < joints[NAME[f"{side}_ankle"], 1]
        # Big toe on the inner side of the foot, small toe on the outer side.
        assert abs(vj[f"{side}_big_toe"][0]) < abs(vj[f"{side}_small_toe"][0]) - 0.02
        tip = np.abs(vj[f"{side}_middle"][0])
        assert tip > np.abs(verts[:, 0]).max() - 0.01


def test_face_landmarks_are_on_the_front_of_the_face(body):
    joints = posed_body(body, torch.zeros(1, 63)).joints[0].numpy()
    landmarks = joints[76:]
    head = joints[NAME["head"]]
    assert (landmarks[:, 2] > head[2] + 0.05).all()
    assert (np.abs(landmarks[:, 0]) < 0.07).all()
    brows, mouth = landmarks[:10], landmarks[31:]
    assert brows[:, 1].min() > mouth[:, 1].max()


def test_shape_and_expression_change_the_body(body, npz):
    zero = torch.zeros(1, 63)
    rest = posed_body(body, zero)
    taller = posed_body(body, zero, betas=torch.tensor([[2.0] + [0.0] * 9]))

    def height(v: torch.Tensor) -> float:
        return float(v[0, :, 1].max() - v[0, :, 1].min())

    assert height(taller.vertices) > height(rest.vertices) + 0.05
    # Joints follow the surface through the regressor.
    assert taller.joints[0, NAME["head"], 1] > rest.joints[0, NAME["head"], 1] + 0.02
    for k in range(1, 10):
        betas = torch.zeros(1, 10)
        betas[0, k] = 2.0
        delta = (posed_body(body, zero, betas=betas).vertices - rest.vertices).norm(dim=-1)
        assert delta.max() > 0.005, f"beta {k} does not change the body"
    # The 290 extra directions are orthogonal to each other (on the surface vertices).
    extra = npz["shapedirs"][:NUM_SURFACE_VERTICES, :, 10:300].reshape(-1, 290)
    extra = extra.astype(np.float64) / np.linalg.norm(extra, axis=0)
    cosines = extra.T @ extra - np.eye(290)
    assert np.abs(cosines).max() < 1e-4
    # Expressions move the face only.
    expr = torch.zeros(1, 10)
    expr[0, 0] = 2.0
    delta = (posed_body(body, zero, expression=expr).vertices - rest.vertices)[0].norm(dim=-1)
    moved = rest.vertices[0][delta > 1e-4]
    assert len(moved) > 20 and (moved[:, 1] > rest.joints[0, NAME["neck"], 1]).all()


def test_cli_writes_the_same_bytes_as_the_cache(tmp_path, standin_dir):
    # another BLAS thread count than the process that built the cache (OpenBLAS's sums depend
    # on it: the file must not)
    threads = "1" if torch.get_num_threads() > 1 else "2"
    env = {**os.environ, "OMP_NUM_THREADS": threads, "OPENBLAS_NUM_THREADS": threads}
    subprocess.run([sys.executable, "-m", "drpose.body.standin", "--out", str(tmp_path)],
                   check=True, capture_output=True, env=env)  # fmt: skip
    written = (tmp_path / MODEL_FILE).read_bytes()
    assert written == (standin_dir / MODEL_FILE).read_bytes()  # deterministic


def test_missing_model_folder_or_file_names_the_expected_path(tmp_path):
    with pytest.raises(FileNotFoundError, match=r"smplx/SMPLX_NEUTRAL\.npz"):
        load_smplx(tmp_path / "nowhere")
    with pytest.raises(FileNotFoundError, match=r"SMPLX_NEUTRAL\.npz"):
        load_smplx(tmp_path)
    with pytest.raises(ValueError, match="gender"):
        load_smplx(tmp_path, gender="robot")


def test_resolve_model_dir_order(tmp_path, monkeypatch, standin_dir):
    monkeypatch.setenv(body_model.MODEL_DIR_ENV, str(tmp_path))
    assert resolve_model_dir() == tmp_path
    assert resolve_model_dir(tmp_path / "x") == tmp_path / "x"
    monkeypatch.delenv(body_model.MODEL_DIR_ENV)
    monkeypatch.setattr(body_model, "_notice_given", False)
    with pytest.warns(body_model.StandInModelWarning, match="STAND-IN"):
        assert resolve_model_dir() == standin_dir
    assert resolve_model_dir() == standin_dir  # the notice is given once


def test_posed_body_checks_shapes(body):
    with pytest.raises(ValueError, match="body_pose"):
        posed_body(body, torch.zeros(2, 60))
    with pytest.raises(ValueError, match="betas"):
        posed_body(body, torch.zeros(2, 63), betas=torch.zeros(1, 10))
    out = posed_body(body, torch.zeros(3, 63))
    assert out.vertices.shape == (3, 10475, 3) and out.faces.dtype == torch.int64


def test_joint_sets():
    assert len(POSESCORE_JOINTS) == 23 and POSESCORE_JOINTS.indices == tuple(range(23))
    assert POSESCORE_JOINTS.names[0] == "pelvis" and POSESCORE_JOINTS.names[-1] == "jaw"
    assert len(COCO17) == 17 and COCO17.names[0] == "nose"
    assert COCO17.indices[5:] == (16, 17, 18, 19, 20, 21, 1, 2, 4, 5, 7, 8)
    assert COCO17.indices[:5] == (55, 57, 56, 59, 58)  # nose, left eye, right eye, left/right ear
    assert JOINT_NAMES[:55] == list(SMPLX_JOINT_NAMES)
    assert JOINT_NAMES[55:76] == list(SMPLX_VERTEX_JOINT_NAMES)
    assert VERTEX_IDS["smplx"] == SMPLX_VERTEX_IDS


def test_mean_hand_is_a_relaxed_curl_towards_the_palm(standin_dir, body):
    relaxed = load_smplx(standin_dir, flat_hand_mean=False)
    flat = posed_body(body, torch.zeros(1, 63)).joints[0]
    curled = posed_body(relaxed, torch.zeros(1, 63)).joints[0]
    tips = [55 + i for i, n in enumerate(SMPLX_VERTEX_JOINT_NAMES) if n.endswith("middle")]
    for tip in tips:
        drop = float(flat[tip, 1] - curled[tip, 1])  # palms face -y in the rest pose
        assert 0.01 < drop < 0.06
    np.testing.assert_allclose(curled[:23].numpy(), flat[:23].numpy(), atol=1e-6)


def test_edge_splits_keep_a_closed_genus0_surface():
    from drpose.body._standin_mesh import _split_longest_edges, check_closed_genus0

    sphere = trimesh.creation.icosphere(subdivisions=1)
    verts, faces = _split_longest_edges(sphere.vertices, sphere.faces, 7)
    assert verts.shape == (42 + 7, 3) and faces.shape == (80 + 14, 3)
    check_closed_genus0(faces, len(verts))
    split = trimesh.Trimesh(verts, faces, process=False)
    assert split.is_winding_consistent and np.isclose(split.volume, sphere.volume)


def test_meshing_hits_the_exact_face_count():
    from drpose.body._standin_mesh import mesh_primitives
    from drpose.body._standin_shape import Primitive

    blob = (
        Primitive(0, "ellipsoid", (0.0, 0.0, 0.0), (0.0, 0.0, 0.0), (0.1, 0.06, 0.05), 0.02),
        Primitive(1, "cone", (0.05, 0.0, 0.0), (0.2, 0.05, 0.0), (0.03, 0.02, 0.0), 0.02),
    )
    verts, faces = mesh_primitives(blob, num_faces=600, voxel=0.01)
    assert verts.shape == (302, 3) and faces.shape == (600, 3)
    mesh = trimesh.Trimesh(verts, faces, process=False)
    assert mesh.is_watertight and mesh.volume > 0
