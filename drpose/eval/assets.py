"""Rigged human assets for the MixamoRP benchmark: glTF 2.0 skins posed by SMPL-X parameters.

Reading: :func:`load_gltf_asset` reads a ``.gltf``/``.glb`` with pygltflib (trimesh reads glTF
meshes but not skins): the first skinned mesh node's primitives (POSITION, JOINTS_0,
WEIGHTS_0, COLOR_0 or the material's baseColorFactor), the skin's joints and inverse bind
matrices, and the node hierarchy (translation / rotation / scale or matrix). The rest pose is
the bind pose: vertices are skinned once with the joints' rest world transforms, so the asset
lives in glTF's world frame (metres, y up, the body faces +z, as SMPL-X).

Posing (:meth:`RiggedAsset.pose`), a retargeting by world-frame rotations: every asset joint
whose name maps to an SMPL-X body joint (:data:`MIXAMO_TO_SMPLX`: Mixamo's ``mixamorig:Hips``,
``Spine``, ``LeftUpLeg``, ...; the ``prefix:`` part of a name is ignored; SMPL-X's own names are
accepted too) takes that joint's *global* rotation from the SMPL-X pose (the product of the
axis-angle rotations along the SMPL-X kinematic chain, ``global_orient`` at the pelvis); joints
that map to nothing keep their parent's. A joint's posed position is its parent's posed position
plus the parent's rotation applied to the rest offset, the root stays at its rest position
(``transl`` is not used: benchmark images are normalised anyway). Skinning is linear blend
skinning with the skin's weights. This assumes the asset's rest pose is SMPL-X's (a T-pose with
the joints' frames aligned to the world), as Mixamo characters' bind poses are; an A-posed asset
gets A-pose offsets added to every pose.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import trimesh
from scipy.spatial.transform import Rotation

from drpose.body import SMPLX_JOINT_NAMES, SMPLX_PARENTS

NUM_BODY_JOINTS = 22  # SMPL-X skeleton joints 0-21 (pelvis + 21 body joints)

MIXAMO_TO_SMPLX: dict[str, str] = {
    "Hips": "pelvis", "LeftUpLeg": "left_hip", "RightUpLeg": "right_hip", "Spine": "spine1",
    "LeftLeg": "left_knee", "RightLeg": "right_knee", "Spine1": "spine2",
    "LeftFoot": "left_ankle", "RightFoot": "right_ankle", "Spine2": "spine3",
    "LeftToeBase": "left_foot", "RightToeBase": "right_foot", "Neck": "neck",
    "LeftShoulder": "left_collar", "RightShoulder": "right_collar", "Head": "head",
    "LeftArm": "left_shoulder", "RightArm": "right_shoulder", "LeftForeArm": "left_elbow",
    "RightForeArm": "right_elbow", "LeftHand": "left_wrist", "RightHand": "right_wrist",
}  # fmt: skip
"""Mixamo bone name (without the ``mixamorig:`` prefix) -> SMPL-X body joint name."""

_BODY_INDEX = {name: i for i, name in enumerate(SMPLX_JOINT_NAMES[:NUM_BODY_JOINTS])}


def smplx_joint_index(name: str) -> int | None:
    """SMPL-X body joint index (0-21) of an asset joint name, or None (module docstring)."""
    base = name.rsplit(":", 1)[-1]
    return _BODY_INDEX.get(MIXAMO_TO_SMPLX.get(base, base))


def smplx_global_rotations(global_orient: np.ndarray, body_pose: np.ndarray) -> np.ndarray:
    """(22, 3, 3) world rotations of SMPL-X joints 0-21 from (3,) global_orient and (63,)
    body_pose axis-angle (radians): ``G_j = G_parent(j) @ R_j``."""
    local = Rotation.from_rotvec(
        np.concatenate([global_orient, body_pose]).reshape(NUM_BODY_JOINTS, 3)).as_matrix()
    world = np.empty_like(local)
    for j in range(NUM_BODY_JOINTS):
        parent = SMPLX_PARENTS[j]
        world[j] = local[j] if parent < 0 else world[parent] @ local[j]
    return world


@dataclass
class RiggedAsset:
    """A skinned mesh in its rest (bind) pose, world metres.

    vertices: (N, 3) float64; faces: (F, 3) int64; colours: (N, 3) float32 in [0, 1].
    joint_names: K names; parents: (K,) int64 (-1 for roots), parents before children;
    rest_positions: (K, 3) joint world positions in the rest pose.
    skin_joints: (N, I) int64 joint indices and skin_weights: (N, I) float64 (rows sum to 1).
    """

    name: str
    vertices: np.ndarray
    faces: np.ndarray
    colours: np.ndarray
    joint_names: tuple[str, ...]
    parents: np.ndarray
    rest_positions: np.ndarray
    skin_joints: np.ndarray
    skin_weights: np.ndarray

    def __post_init__(self) -> None:
        self.smplx_index = np.array([-1 if (i := smplx_joint_index(n)) is None else i
                                     for n in self.joint_names], dtype=np.int64)
        if (self.smplx_index == 0).sum() != 1:
            raise ValueError(f"asset {self.name!r}: exactly one joint must map to the SMPL-X "
                             f"pelvis (mixamorig:Hips or 'pelvis'); joints: {self.joint_names}")

    def pose(self, global_orient: np.ndarray,
             body_pose: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Posed (N, 3) vertices and (22, 3) SMPL-X body joint positions (NaN where no asset
        joint maps to that SMPL-X joint), metres, for one SMPL-X pose (module docstring)."""
        smplx_world = smplx_global_rotations(np.asarray(global_orient, np.float64),
                                             np.asarray(body_pose, np.float64))
        count = len(self.joint_names)
        rotations = np.empty((count, 3, 3))
        positions = np.empty((count, 3))
        for k in range(count):
            parent = self.parents[k]
            if self.smplx_index[k] >= 0:
                rotations[k] = smplx_world[self.smplx_index[k]]
            else:
                rotations[k] = np.eye(3) if parent < 0 else rotations[parent]
            if parent < 0:
                positions[k] = self.rest_positions[k]
            else:
                offset = self.rest_positions[k] - self.rest_positions[parent]
                positions[k] = positions[parent] + rotations[parent] @ offset
        # Skinning transform of joint k: x -> R_k (x - rest_k) + posed_k.
        per_joint = (np.einsum("nkij,nkj->nki", rotations[self.skin_joints],
                               self.vertices[:, None] - self.rest_positions[self.skin_joints])
                     + positions[self.skin_joints])
        vertices = (self.skin_weights[..., None] * per_joint).sum(axis=1)
        joints = np.full((NUM_BODY_JOINTS, 3), np.nan)
        mapped = self.smplx_index >= 0
        joints[self.smplx_index[mapped]] = positions[mapped]
        return vertices, joints

    def mesh(self, vertices: np.ndarray | None = None) -> trimesh.Trimesh:
        """A vertex-coloured trimesh of the rest pose or of given (N, 3) vertices."""
        rgba = np.concatenate([self.colours, np.ones((len(self.colours), 1))], axis=1)
        return trimesh.Trimesh(self.vertices if vertices is None else vertices, self.faces,
                               vertex_colors=(rgba * 255).round().astype(np.uint8), process=False)


# ---- glTF reading ------------------------------------------------------------------------------

_COMPONENTS = {5120: np.int8, 5121: np.uint8, 5122: np.int16, 5123: np.uint16, 5125: np.uint32,
               5126: np.float32}
_WIDTH = {"SCALAR": 1, "VEC2": 2, "VEC3": 3, "VEC4": 4, "MAT4": 16}


def _accessor(gltf, index: int) -> np.ndarray:
    """(count, width) array of an accessor (no sparse accessors); normalised integers -> [0, 1]."""
    accessor = gltf.accessors[index]
    if accessor.sparse is not None:
        raise ValueError(f"glTF accessor {index}: sparse accessors are not supported")
    view = gltf.bufferViews[accessor.bufferView]
    data = gltf.binary_blob()  # one buffer after convert_buffers(BINARYBLOB)
    dtype = np.dtype(_COMPONENTS[accessor.componentType])
    width = _WIDTH[accessor.type]
    stride = view.byteStride or dtype.itemsize * width
    start = (view.byteOffset or 0) + (accessor.byteOffset or 0)
    rows = np.ndarray((accessor.count, width), dtype=dtype, buffer=data, offset=start,
                      strides=(stride, dtype.itemsize)).copy()
    if accessor.normalized and dtype.kind in "iu":
        rows = rows.astype(np.float64) / np.iinfo(dtype).max
    return rows


def _local_matrix(node) -> np.ndarray:
    if node.matrix is not None:
        return np.asarray(node.matrix, np.float64).reshape(4, 4).T  # column-major in glTF
    m = np.eye(4)
    scale = np.asarray(node.scale if node.scale is not None else (1, 1, 1), np.float64)
    rotation = node.rotation if node.rotation is not None else (0, 0, 0, 1)  # x, y, z, w
    m[:3, :3] = Rotation.from_quat(rotation).as_matrix() * scale
    m[:3, 3] = node.translation if node.translation is not None else (0, 0, 0)
    return m


def _world_matrices(gltf) -> dict[int, np.ndarray]:
    parent = {child: i for i, node in enumerate(gltf.nodes) for child in (node.children or [])}
    world: dict[int, np.ndarray] = {}

    def resolve(i: int) -> np.ndarray:
        if i not in world:
            local = _local_matrix(gltf.nodes[i])
            world[i] = local if i not in parent else resolve(parent[i]) @ local
        return world[i]

    for i in range(len(gltf.nodes)):
        resolve(i)
    return world


def load_gltf_asset(path: str | Path) -> RiggedAsset:
    """Read a rigged human (``.gltf``/``.glb``, glTF 2.0 with a skin) as a :class:`RiggedAsset`
    (module docstring). Raises ValueError naming what is missing."""
    from pygltflib import GLTF2, BufferFormat

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: no such glTF file (.gltf or .glb)")
    try:
        gltf = GLTF2().load(str(path))
    except (struct.error, ValueError, KeyError, TypeError, UnicodeDecodeError) as error:
        raise ValueError(f"{path}: not a readable glTF 2.0 file ({type(error).__name__}: "
                         f"{error}); pass a rigged .gltf or .glb character") from error
    if gltf is None:
        raise ValueError(f"{path}: not a glTF file (expected .gltf or .glb)")
    gltf.convert_buffers(BufferFormat.BINARYBLOB)  # data URIs and external .bin -> one blob
    skinned = [n for n in gltf.nodes if n.mesh is not None and n.skin is not None]
    if not skinned:
        raise ValueError(f"{path}: no skinned mesh node (a node with both 'mesh' and 'skin'); "
                         "export the character with its armature")
    node = skinned[0]
    skin = gltf.skins[node.skin]
    world = _world_matrices(gltf)
    joint_world = np.stack([world[j] for j in skin.joints])  # (K, 4, 4)
    if skin.inverseBindMatrices is not None:
        inverse_bind = _accessor(gltf, skin.inverseBindMatrices).reshape(-1, 4, 4)
        inverse_bind = inverse_bind.transpose(0, 2, 1).astype(np.float64)
    else:
        inverse_bind = np.broadcast_to(np.eye(4), joint_world.shape)
    skin_matrices = joint_world @ inverse_bind
    node_index = {j: k for k, j in enumerate(skin.joints)}
    skin_parent = np.full(len(skin.joints), -1, dtype=np.int64)  # in the skin's joint order
    for k, j in enumerate(skin.joints):
        for child in gltf.nodes[j].children or []:
            if child in node_index:
                skin_parent[node_index[child]] = k
    depth = np.zeros(len(skin.joints), dtype=np.int64)
    for k in range(len(skin.joints)):
        p = skin_parent[k]
        while p >= 0:
            depth[k] += 1
            p = skin_parent[p]
    order = np.argsort(depth, kind="stable")  # parents before children
    rank = np.argsort(order)
    parents = np.where(skin_parent[order] >= 0, rank[skin_parent[order]], -1)
    vertices, faces, colours, joints, weights = [], [], [], [], []
    offset = 0
    for primitive in gltf.meshes[node.mesh].primitives:
        attributes = primitive.attributes
        if attributes.JOINTS_0 is None or attributes.WEIGHTS_0 is None:
            raise ValueError(f"{path}: a primitive of the skinned mesh has no JOINTS_0/WEIGHTS_0")
        position = _accessor(gltf, attributes.POSITION).astype(np.float64)
        count = len(position)
        index = (_accessor(gltf, primitive.indices).reshape(-1, 3).astype(np.int64)
                 if primitive.indices is not None else np.arange(count).reshape(-1, 3))
        if attributes.COLOR_0 is not None:
            colour = _accessor(gltf, attributes.COLOR_0)[:, :3].astype(np.float32)
        else:
            base = (0.7, 0.7, 0.7)
            if primitive.material is not None:
                pbr = gltf.materials[primitive.material].pbrMetallicRoughness
                if pbr is not None and pbr.baseColorFactor is not None:
                    base = pbr.baseColorFactor[:3]
            colour = np.tile(np.asarray(base, np.float32), (count, 1))
        vertices.append(position)
        faces.append(index + offset)
        colours.append(colour)
        joints.append(_accessor(gltf, attributes.JOINTS_0).astype(np.int64))
        weights.append(_accessor(gltf, attributes.WEIGHTS_0).astype(np.float64))
        offset += count
    skin_joints = np.concatenate(joints)
    skin_weights = np.concatenate(weights)
    totals = skin_weights.sum(axis=1, keepdims=True)
    if np.any(totals <= 0):
        raise ValueError(f"{path}: some vertices have all-zero skin weights")
    skin_weights = skin_weights / totals
    position = np.concatenate(vertices)
    homogeneous = np.concatenate([position, np.ones((len(position), 1))], axis=1)
    blended = np.einsum("ni,nikl->nkl", skin_weights, skin_matrices[skin_joints])
    rest = np.einsum("nkl,nl->nk", blended, homogeneous)[:, :3]
    names = tuple(gltf.nodes[skin.joints[k]].name or f"joint{k}" for k in order)
    return RiggedAsset(name=path.stem, vertices=rest, faces=np.concatenate(faces),
                       colours=np.concatenate(colours), joint_names=names, parents=parents,
                       rest_positions=joint_world[order, :3, 3].copy(),
                       skin_joints=rank[skin_joints], skin_weights=skin_weights)
