"""A STAND-IN for the SMPL-X body model file, generated from scratch.

This is not SMPL-X. The licensed model (SMPLX_NEUTRAL.npz from the Max Planck Institute) cannot
be downloaded here, so this module builds a file in the same format that the unmodified ``smplx``
package loads, for tests, the default run and anyone without the licence. It has SMPL-X's
layout: 10,475 vertices, 20,908 triangles, the 55 joints of SMPL-X's kinematic tree,
300 shape + 100 expression directions, 486 pose-corrective directions, 45x45 hand PCA bases and
face landmarks; but its surface, weights and blend shapes are made up (see below), so results on
it say nothing about real people.

To use the real model: register at https://smpl-x.is.tue.mpg.de, download the SMPL-X model files
(the ``models_smplx_v1_1`` archive), and point drpose at the folder that contains ``smplx/``
(``<dir>/smplx/SMPLX_NEUTRAL.npz``): set ``DRPOSE_SMPLX_DIR=<dir>`` or pass
``model_dir=<dir>`` to :func:`drpose.body.load_smplx`. Without either, drpose uses this stand-in
(cached under ``$DRPOSE_CACHE`` or ``~/.cache/drpose``) and says so once.

How the stand-in is made (deterministic, a few seconds):

- Body: round cones and ellipsoids around the bones of a hand-designed T-pose skeleton
  (:mod:`drpose.body._standin_shape`; metres, y up, facing +z, about 1.74 m tall, exactly
  left/right symmetric joints), fused by a smooth-minimum signed distance field, meshed by
  marching cubes, decimated by quadric edge collapse and relaxed onto the surface
  (:mod:`drpose.body._standin_mesh`).
- Mesh invariant: 20,908 triangles cannot close a surface over 10,475 vertices (a closed
  genus-g surface has F = 2V - 4 + 4g, so 10,475 vertices would need 20,946 + 4g faces). The
  stand-in keeps both of SMPL-X's counts and stays watertight: vertices 0-10,455 and the 20,908
  faces form ONE closed, consistently oriented genus-0 surface (F = 2 * 10,456 - 4); vertices
  10,456-10,474 (19 of them) are referenced by no face. Each is an exact copy (position, skinning
  weights, blend shapes) of vertex 0-18, so it moves with the body and never changes a bounding
  box; the joint regressor gives them no weight.
- The vertices that ``smplx`` reads as extra joints (``smplx.vertex_ids.vertex_ids["smplx"]``:
  nose, eyes, ears, big and small toes, heels, fingertips) are renumbered to sit at those places.
- Skinning weights: a softmax over the distances to the parts next to each vertex's part in the
  tree (at most 4 influences), so limbs bend smoothly over a few centimetres at each joint.
- Joint regressor: each joint is an affine combination of the ring of vertices around it that
  reproduces the rest joint exactly (and moves with the surface under shape changes).
- Shape directions: 10 designed ones (stature, girth, leg length, shoulder width, belly, hip
  width, arm length, head size, torso length, chest depth) then 290 small smooth symmetric random
  fields; expression directions: mouth open, smile, brow raise, then 97 small fields on the face.
- Pose correctives (``posedirs``): all zero. The stand-in is pure linear blend skinning.
- Hands: an orthonormal 45x45 basis per hand (flex, spread, thumb, index-vs-little first) and a
  relaxed mean pose. Face landmarks: 51 static points and a 79x17 yaw table of jaw-contour
  points, placed by casting rays at the face.

Command line: ``python -m drpose.body.standin --out DIR`` writes ``DIR/smplx/SMPLX_NEUTRAL.npz``.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata
import os
import sys
import zipfile
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from threadpoolctl import threadpool_limits

from drpose._cli import UsageError, command
from drpose.body import _standin_mesh, _standin_rig, _standin_shape
from drpose.body._standin_mesh import mesh_primitives, vertex_normals
from drpose.body._standin_rig import (
    contour_landmarks,
    expression_directions,
    face_landmarks,
    hand_pca,
    joint_regressor,
    part_distances,
    part_sizes,
    ray_hits,
    shape_directions,
    skinning_weights,
    vertex_joint_targets,
)
from drpose.body._standin_shape import body_primitives, rest_joints
from drpose.body.joints import SMPLX_PARENTS

NUM_VERTICES = 10475
NUM_FACES = 20908
NUM_SURFACE_VERTICES = NUM_FACES // 2 + 2  # 10,456: closed genus-0 surface
NUM_POSE_BLEND_SHAPES = (len(SMPLX_PARENTS) - 1) * 9  # 486
MODEL_FILE = Path("smplx") / "SMPLX_NEUTRAL.npz"

# smplx's vertex joints (smplx.vertex_ids.vertex_ids["smplx"]), copied as data so the stand-in
# does not depend on import details of the package it must satisfy.
SMPLX_VERTEX_IDS: dict[str, int] = {
    "nose": 9120, "reye": 9929, "leye": 9448, "rear": 616, "lear": 6,
    "rthumb": 8079, "rindex": 7669, "rmiddle": 7794, "rring": 7905, "rpinky": 8022,
    "lthumb": 5361, "lindex": 4933, "lmiddle": 5058, "lring": 5169, "lpinky": 5286,
    "LBigToe": 5770, "LSmallToe": 5780, "LHeel": 8846,
    "RBigToe": 8463, "RSmallToe": 8474, "RHeel": 8635,
}  # fmt: skip


def _source_version() -> str:
    digest = hashlib.sha256()
    for module in (_standin_shape, _standin_mesh, _standin_rig):
        digest.update(Path(module.__file__).read_bytes())
    digest.update(Path(__file__).read_bytes())
    for dist in ("PyMCubes", "fast_simplification", "numpy"):
        digest.update(f"{dist}={importlib.metadata.version(dist)};".encode())
    return digest.hexdigest()[:12]


# Hashed once, when the generator's code is imported: a process that loaded older code and
# reads the edited sources later must not file its output under the new key.
_VERSION = _source_version()


def generator_version() -> str:
    """A key that changes whenever the generated file could change (sources and mesh libraries)."""
    return _VERSION


def _place_vertex_joints(verts: np.ndarray, faces: np.ndarray, joints: np.ndarray):
    """Renumber vertices so that each smplx vertex-joint id is the vertex at its place.

    Returns (verts, faces) renumbered.
    """
    rays = vertex_joint_targets(joints)
    names = sorted(rays)
    origins = np.stack([rays[n][0] for n in names])
    dirs = np.stack([rays[n][1] for n in names])
    _, _, points = ray_hits(verts, faces, origins, dirs)
    chosen = [int(np.argmin(np.linalg.norm(verts - p, axis=1))) for p in points]
    if len(set(chosen)) != len(chosen):
        raise RuntimeError("stand-in: two vertex joints landed on the same vertex")
    order = np.arange(len(verts))  # order[new id] = old id
    for name, old in zip(names, chosen, strict=True):
        target = SMPLX_VERTEX_IDS[name]
        here = int(np.flatnonzero(order == old)[0])
        order[[target, here]] = order[[here, target]]
    new_id = np.empty_like(order)
    new_id[order] = np.arange(len(order))
    return verts[order], new_id[faces]


def build_standin() -> dict[str, np.ndarray]:
    """All arrays of the stand-in SMPLX_NEUTRAL.npz (keys and shapes as in the real file).

    BLAS runs on one thread: OpenBLAS's results depend on its thread count (the blend shapes'
    orthonormalisation differed by one float32 ulp between 1 and 2 threads), and the file must
    be the same bytes in every process (its hash names the cache folder)."""
    with threadpool_limits(limits=1, user_api="blas"):
        return _build_standin()


def _build_standin() -> dict[str, np.ndarray]:
    joints = rest_joints()
    primitives = body_primitives(joints)
    verts, faces = mesh_primitives(primitives, NUM_FACES)
    verts, faces = _place_vertex_joints(verts, faces, joints)

    dist = part_distances(primitives, verts)
    nearest = np.argmin(dist, axis=1)
    sizes = part_sizes(primitives)
    weights = skinning_weights(dist, sizes)
    regressor = joint_regressor(verts, joints, nearest, sizes)
    normals = vertex_normals(verts, faces)
    shapedirs = np.concatenate(
        [
            shape_directions(verts, normals, joints, nearest),
            expression_directions(verts, nearest),
        ],
        axis=2,
    )
    lmk_faces, lmk_bary = face_landmarks(verts, faces)
    dyn_faces, dyn_bary = contour_landmarks(verts, faces)
    comp_l, comp_r, mean_l, mean_r = hand_pca()

    copies = np.arange(NUM_VERTICES - NUM_SURFACE_VERTICES)  # unreferenced duplicates' sources

    def with_copies(per_vertex: np.ndarray) -> np.ndarray:
        return np.concatenate([per_vertex, per_vertex[copies]], axis=0)

    kintree = np.stack([np.asarray(SMPLX_PARENTS), np.arange(len(SMPLX_PARENTS))])
    f32 = np.float32
    return {
        "v_template": with_copies(verts).astype(f32),
        "f": faces.astype(np.int32),
        "J_regressor": np.pad(regressor, ((0, 0), (0, len(copies)))).astype(f32),
        "kintree_table": kintree.astype(np.int64),
        "weights": with_copies(weights).astype(f32),
        "shapedirs": with_copies(shapedirs).astype(f32),
        "posedirs": np.zeros((NUM_VERTICES, 3, NUM_POSE_BLEND_SHAPES), dtype=f32),
        "hands_componentsl": comp_l.astype(f32),
        "hands_componentsr": comp_r.astype(f32),
        "hands_meanl": mean_l.astype(f32),
        "hands_meanr": mean_r.astype(f32),
        "lmk_faces_idx": lmk_faces.astype(np.int64),
        "lmk_bary_coords": lmk_bary.astype(f32),
        "dynamic_lmk_faces_idx": dyn_faces.astype(np.int64),
        "dynamic_lmk_bary_coords": dyn_bary.astype(f32),
        "drpose_standin_version": np.array(generator_version()),
    }


def _write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """np.savez with fixed zip timestamps, so equal arrays give byte-identical files."""
    with zipfile.ZipFile(path, "w") as archive:
        for key, value in arrays.items():
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            # Mostly-zero arrays shrink to almost nothing; the rest is stored as is (fast).
            sparse = np.count_nonzero(value) < value.size // 4
            info.compress_type = zipfile.ZIP_DEFLATED if sparse else zipfile.ZIP_STORED
            with archive.open(info, "w", force_zip64=True) as handle:
                np.lib.format.write_array(handle, np.ascontiguousarray(value), allow_pickle=False)


def write_standin(out_dir: str | os.PathLike) -> Path:
    """Generate the stand-in and write ``out_dir/smplx/SMPLX_NEUTRAL.npz``; return that path.

    The file appears atomically (written under a temporary name, then renamed), so concurrent
    writers and readers never see a partial file.
    """
    path = Path(out_dir) / MODEL_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        _write_npz(tmp, build_standin())
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


@command
def main(argv: Sequence[str] | None = None) -> None:
    """Run the command line."""
    parser = argparse.ArgumentParser(
        prog="python -m drpose.body.standin",
        description="Write a STAND-IN SMPL-X model file (not the licensed SMPL-X model) to "
        "OUT/smplx/SMPLX_NEUTRAL.npz.",
    )
    parser.add_argument("--out", required=True, help="folder to write smplx/SMPLX_NEUTRAL.npz in")
    args = parser.parse_args(argv)
    if Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out}: an existing file, not a folder; pass a folder (the "
                         f"model is written to OUT/{MODEL_FILE})")
    print(write_standin(args.out))


if __name__ == "__main__":
    sys.exit(main())
