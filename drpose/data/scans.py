"""Textured human scans with SMPL-X fits, rendered in PSHuman's 6-view rig for g_skel.

PoseScore's g_skel learns to read a skeleton from the VAE latents of multi-view images. The paper
trains it on ~3K textured scans (THuman2.1, CustomHumans); :mod:`drpose.data.multiview` renders
SMPL-X bodies in palette colours instead. This module gives the scan source:

* :func:`scan_subjects` reads a folder in THuman2.1's layout: one sub-folder per subject,
  ``NNNN/NNNN.obj`` (with its ``.mtl`` and texture image) and the SMPL-X fit
  ``NNNN/smplx_param.{npz,json,pkl}`` (or the same name under a separate ``fits`` folder, as the
  THuman2.1 download ships them).
* :func:`load_textured_mesh` reads an OBJ with one texture image, or a Collada file
  (``.dae``, or zipped ``.zae``) whose materials are colours and at most one texture image.
* :func:`load_smplx_fit` reads a fit. THuman2.1's convention: the scan is the fitted SMPL-X body
  scaled and moved, ``scan = (smplx(betas, pose) + transl) * scale + translation``
  (``scale`` and ``translation`` default to 1 and 0). ``.pkl`` files are read with an unpickler
  that builds numpy arrays and nothing else.
* :func:`fit_smplx_to_mesh` fits SMPL-X (shape, pose, scale, translation) to a mesh by symmetric
  chamfer distance, for a mesh without a fit (the MakeHuman mesh of Debian's
  ``assimp-testmodels``); :func:`repose` then poses the mesh with the fitted body's skinning
  (each scan vertex takes the blend weights of its nearest body vertex, undoes the fit's pose and
  applies another: linear blend skinning, no pose blend shapes).
* :func:`render_scan` renders a mesh in the rig exactly as the SMPL-X renders are made
  (normals in the front camera frame, Lambert-shaded albedo with the light fixed in each
  camera's frame, white background, views 3 and 4 mirrored, the body placed by
  :func:`drpose.render.cameras.normalize_body` of the mesh's own vertices).

Units: metres, y up, the body facing +z (SMPL-X's frame, which THuman2.1's fits use).
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import ClassVar

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import Tensor

from drpose.body import POSESCORE_JOINTS, posed_body
from drpose.ops import interpolate, rasterize
from drpose.render import cameras
from drpose.render.conditions import encode_normals, vertex_normals

FIT_NAMES = ("smplx_param.npz", "smplx_param.json", "smplx_param.pkl")
MESH_SUFFIXES = (".obj", ".dae", ".zae")


class ScanError(ValueError):
    """A scan folder, mesh or fit that cannot be used; the message names the file."""


@dataclass
class TexturedMesh:
    """A triangle mesh with its surface colour.

    vertices (P, 3) float32 metres; faces (F, 3) int32. Colour: faces with ``textured[f]`` sample
    ``texture`` (3, H, W) float in [0, 1] at ``uv`` (Q, 2) (v up, OBJ's convention) indexed by
    ``uv_faces`` (F, 3); the others have the constant ``face_colours[f]`` (F, 3).
    """

    vertices: Tensor
    faces: Tensor
    face_colours: Tensor
    textured: Tensor
    uv: Tensor
    uv_faces: Tensor
    texture: Tensor

    @classmethod
    def plain(cls, vertices: Tensor, faces: Tensor, colour: tuple[float, float, float]
              ) -> TexturedMesh:
        """A mesh of one colour (no texture)."""
        count = faces.shape[0]
        return cls(vertices.float(), faces.to(torch.int32), torch.tensor(colour).expand(count, 3),
                   torch.zeros(count, dtype=torch.bool), torch.zeros(1, 2),
                   torch.zeros(count, 3, dtype=torch.int32), torch.ones(3, 1, 1))

    def with_vertices(self, vertices: Tensor) -> TexturedMesh:
        """The same surface on moved vertices (P, 3)."""
        return TexturedMesh(vertices.float(), self.faces, self.face_colours, self.textured,
                            self.uv, self.uv_faces, self.texture)

    def albedo(self, rast: Tensor) -> Tensor:
        """(N, H, W, 3) surface colour of the pixels of a :func:`drpose.ops.rasterize` output
        (N, H, W, 4) of this mesh; background pixels get the colour of face 0 (mask them)."""
        face = (rast[..., 3].round().long() - 1).clamp(min=0)
        colour = self.face_colours[face]
        if bool(self.textured.any()):
            uv = interpolate(self.uv[None], rast, self.uv_faces)  # (N, H, W, 2)
            grid = torch.stack([uv[..., 0] * 2 - 1, 1 - uv[..., 1] * 2], dim=-1)
            texture = self.texture[None].expand(rast.shape[0], -1, -1, -1)
            sampled = F.grid_sample(texture, grid, mode="bilinear", padding_mode="border",
                                    align_corners=False).permute(0, 2, 3, 1)
            colour = torch.where(self.textured[face][..., None], sampled, colour)
        return colour


# ---- meshes -------------------------------------------------------------------------------------


def _image_tensor(image: Image.Image) -> Tensor:
    array = np.asarray(image.convert("RGB"), dtype=np.float32) / 255
    return torch.from_numpy(array).permute(2, 0, 1).contiguous()


def _load_obj(path: Path) -> TexturedMesh:
    import trimesh

    try:
        mesh = trimesh.load(path, process=False, force="mesh")
    except Exception as error:  # trimesh raises many types for a broken file
        raise ScanError(f"{path}: cannot read the mesh ({error})") from error
    visual = mesh.visual
    image = getattr(getattr(visual, "material", None), "image", None)
    uv = getattr(visual, "uv", None)
    if image is None or uv is None or len(uv) != len(mesh.vertices):
        mtl = ", ".join(str(p) for p in sorted(path.parent.glob("*.mtl"))) or "no .mtl file"
        raise ScanError(f"{path}: the mesh has no texture (a texture image referenced by map_Kd "
                        f"in its material and texture coordinates are needed; found {mtl})")
    faces = torch.from_numpy(np.asarray(mesh.faces, dtype=np.int32))
    count = faces.shape[0]
    return TexturedMesh(
        vertices=torch.from_numpy(np.asarray(mesh.vertices, dtype=np.float32)),
        faces=faces, face_colours=torch.zeros(count, 3),
        textured=torch.ones(count, dtype=torch.bool),
        uv=torch.from_numpy(np.asarray(uv, dtype=np.float32)), uv_faces=faces,
        texture=_image_tensor(image))


def _load_collada(path: Path) -> TexturedMesh:
    try:
        import collada
    except ImportError as error:
        raise ScanError(f"{path}: reading Collada needs pycollada (pip install pycollada)"
                        ) from error
    try:
        document = collada.Collada(str(path))
    except Exception as error:  # pycollada raises many types for a broken file
        raise ScanError(f"{path}: cannot read the Collada file ({error})") from error
    vertices, faces, colours, textured, uvs, uv_faces = [], [], [], [], [], []
    texture, offset, uv_offset = None, 0, 0
    for geometry in document.scene.objects("geometry"):
        for primitive in geometry.primitives():
            material = primitive.material
            if material is None and len(geometry.materialnodebysymbol) == 1:
                material = next(iter(geometry.materialnodebysymbol.values())).target
            triangles = primitive.triangleset() if hasattr(primitive, "triangleset") else primitive
            diffuse = None if material is None else material.effect.diffuse
            count = len(triangles.vertex_index)
            vertices.append(torch.from_numpy(np.asarray(triangles.vertex, dtype=np.float32)))
            faces.append(torch.from_numpy(np.asarray(triangles.vertex_index) + offset))
            offset += len(triangles.vertex)
            if isinstance(diffuse, tuple):
                colours.append(torch.tensor(diffuse[:3], dtype=torch.float32).expand(count, 3))
                textured.append(torch.zeros(count, dtype=torch.bool))
                uv_faces.append(torch.zeros(count, 3, dtype=torch.int64))
                continue
            image = getattr(getattr(getattr(diffuse, "sampler", None), "surface", None),
                            "image", None)
            if image is None or image.pilimage is None or not len(triangles.texcoordset):
                raise ScanError(f"{path}: geometry {geometry.original.id} has neither a colour "
                                "nor a readable texture image in its material")
            if texture is not None and not torch.equal(texture, _image_tensor(image.pilimage)):
                raise ScanError(f"{path}: more than one texture image; drpose reads meshes "
                                "with one texture (bake the others into it)")
            texture = _image_tensor(image.pilimage)
            uv = np.asarray(triangles.texcoordset[0], dtype=np.float32)
            uvs.append(torch.from_numpy(uv))
            corners = np.asarray(triangles.texcoord_indexset[0]) + uv_offset
            uv_faces.append(torch.from_numpy(corners))
            uv_offset += len(uv)
            colours.append(torch.zeros(count, 3))
            textured.append(torch.ones(count, dtype=torch.bool))
    if not faces:
        raise ScanError(f"{path}: no triangles in the file's scene")
    return TexturedMesh(
        vertices=torch.cat(vertices), faces=torch.cat(faces).to(torch.int32),
        face_colours=torch.cat(colours), textured=torch.cat(textured),
        uv=torch.cat(uvs) if uvs else torch.zeros(1, 2),
        uv_faces=torch.cat(uv_faces).to(torch.int32),
        texture=texture if texture is not None else torch.ones(3, 1, 1))


def load_textured_mesh(path: str | Path) -> TexturedMesh:
    """A mesh with its colours: ``.obj`` (one texture image) or ``.dae``/``.zae`` (Collada;
    material colours and at most one texture image). Raises :class:`ScanError` naming the file
    when it is missing, unreadable or has no colour."""
    path = Path(path)
    if not path.is_file():
        raise ScanError(f"{path}: no such mesh file")
    suffix = path.suffix.lower()
    if suffix == ".obj":
        return _load_obj(path)
    if suffix in (".dae", ".zae"):
        return _load_collada(path)
    raise ScanError(f"{path}: unknown mesh format (expected one of {', '.join(MESH_SUFFIXES)})")


# ---- SMPL-X fits --------------------------------------------------------------------------------


@dataclass
class SmplxFit:
    """An SMPL-X fit of a scan, THuman2.1's convention (module docstring): betas (10,),
    global_orient (3,) and body_pose (63,) axis-angle radians, transl (3,) metres in SMPL-X's
    frame, then ``scale`` and ``translation`` (3,) metres to the scan's frame."""

    betas: np.ndarray
    global_orient: np.ndarray
    body_pose: np.ndarray
    transl: np.ndarray
    scale: float = 1.0
    translation: np.ndarray | None = None

    def to_scan(self, points: Tensor) -> Tensor:
        """(..., 3) points of the fitted body (SMPL-X output, transl included) -> scan frame."""
        shift = torch.zeros(3) if self.translation is None else torch.from_numpy(self.translation)
        return points * self.scale + shift.to(points)

    def from_scan(self, points: Tensor) -> Tensor:
        """Inverse of :meth:`to_scan`."""
        shift = torch.zeros(3) if self.translation is None else torch.from_numpy(self.translation)
        return (points - shift.to(points)) / self.scale

    def to_json(self) -> dict:
        return {name: (value.tolist() if isinstance(value, np.ndarray) else value)
                for name, value in vars(self).items()}


class _ArrayUnpickler(pickle.Unpickler):
    """Builds numpy arrays, dicts, lists and numbers; refuses every other class (a pickle from
    elsewhere may run code when loaded by the plain unpickler)."""

    ALLOWED: ClassVar[frozenset[tuple[str, str]]] = frozenset({
        ("numpy", "ndarray"), ("numpy", "dtype"), ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"), ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar")})

    def find_class(self, module: str, name: str):
        if (module, name) in self.ALLOWED:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(
            f"refused to build {module}.{name}: only numpy arrays are read")


def _fit_field(values: dict, name: str, size: int, path: Path, default: float | None = None
               ) -> np.ndarray:
    if name not in values:
        if default is None:
            raise ScanError(f"{path}: no {name!r} in the SMPL-X fit (has {sorted(values)})")
        return np.full(size, default, dtype=np.float32)
    array = np.asarray(values[name], dtype=np.float32).reshape(-1)
    if name == "betas":  # fits may carry more or fewer shape coefficients than the model uses
        return np.pad(array, (0, max(0, size - array.size)))[:size]
    if array.size != size:
        raise ScanError(f"{path}: {name!r} has {array.size} values, expected {size}")
    return array


def load_smplx_fit(path: str | Path, num_betas: int = 10) -> SmplxFit:
    """Read an SMPL-X fit (``.npz``, ``.json`` or ``.pkl``; THuman2.1's keys: ``betas``,
    ``global_orient``, ``body_pose``, ``transl``, ``scale``, ``translation``; hand, face and
    expression entries are ignored: PoseScore's 23 joints do not depend on them)."""
    path = Path(path)
    if not path.is_file():
        raise ScanError(f"{path}: no such SMPL-X fit file")
    try:
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                values = {name: data[name] for name in data.files}
        elif path.suffix == ".json":
            values = json.loads(path.read_text())
        elif path.suffix == ".pkl":
            values = _ArrayUnpickler(io.BytesIO(path.read_bytes()), encoding="latin1").load()
        else:
            raise ScanError(f"{path}: unknown fit format (expected .npz, .json or .pkl)")
    except (OSError, ValueError, pickle.UnpicklingError, EOFError) as error:
        if isinstance(error, ScanError):
            raise
        raise ScanError(f"{path}: cannot read the SMPL-X fit ({error})") from error
    if not isinstance(values, dict):
        raise ScanError(f"{path}: expected a mapping of SMPL-X parameters, got {type(values)}")
    scale = _fit_field(values, "scale", 1, path, default=1.0)
    return SmplxFit(
        betas=_fit_field(values, "betas", num_betas, path),
        global_orient=_fit_field(values, "global_orient", 3, path),
        body_pose=_fit_field(values, "body_pose", 63, path),
        transl=_fit_field(values, "transl", 3, path, default=0.0),
        scale=float(scale[0]),
        translation=_fit_field(values, "translation", 3, path, default=0.0))


def fitted_body(model, fit: SmplxFit, body_pose: np.ndarray | None = None,
                global_orient: np.ndarray | None = None):
    """The fitted SMPL-X body (:class:`drpose.body.BodyOutput`, SMPL-X frame, batch 1), in the
    fit's pose or in another (``body_pose`` (63,), ``global_orient`` (3,))."""
    def row(array: np.ndarray) -> Tensor:
        return torch.from_numpy(np.asarray(array, dtype=np.float32))[None]

    return posed_body(model, row(fit.body_pose if body_pose is None else body_pose),
                      row(fit.global_orient if global_orient is None else global_orient),
                      betas=row(fit.betas[:model.num_betas]), transl=row(fit.transl))


def posescore_joints(model, fit: SmplxFit) -> Tensor:
    """(23, 3) PoseScore joints of a fit in the scan's frame (metres)."""
    joints = fitted_body(model, fit).joints[0, list(POSESCORE_JOINTS.indices)]
    return fit.to_scan(joints.detach().float())


# ---- the THuman2.1 layout -----------------------------------------------------------------------


@dataclass(frozen=True)
class ScanSubject:
    """One subject of a scan folder: its name, mesh file and SMPL-X fit file."""

    name: str
    mesh: Path
    fit: Path


def scan_subjects(root: str | Path, fits: str | Path | None = None) -> list[ScanSubject]:
    """The subjects of a folder in THuman2.1's layout (module docstring), sorted by name.

    Every sub-folder holding a mesh is a subject; its fit is looked for next to the mesh, then in
    ``fits/<name>/``. Raises :class:`ScanError` naming the folder or the fit files expected.
    """
    root = Path(root)
    if not root.is_dir():
        raise ScanError(f"{root}: no such scan folder")
    subjects = []
    for folder in sorted(p for p in root.iterdir() if p.is_dir()):
        meshes = [folder / f"{folder.name}{s}" for s in MESH_SUFFIXES
                  if (folder / f"{folder.name}{s}").is_file()]
        if not meshes:
            continue
        places = [folder] + ([Path(fits) / folder.name] if fits is not None else [])
        candidates = [place / name for place in places for name in FIT_NAMES]
        found = [c for c in candidates if c.is_file()]
        if not found:
            raise ScanError(f"{meshes[0]}: no SMPL-X fit for this scan (looked for "
                            f"{', '.join(str(c) for c in candidates)})")
        subjects.append(ScanSubject(folder.name, meshes[0], found[0]))
    if not subjects:
        raise ScanError(f"{root}: no scans (expected sub-folders NNNN/ holding NNNN.obj)")
    return subjects


# ---- fitting a body to a mesh, and reposing -----------------------------------------------------


@dataclass
class MeshFitReport:
    """How well :func:`fit_smplx_to_mesh` fits: mean distance (metres) from mesh vertices to the
    nearest body vertex and from body vertices to the nearest mesh vertex, at the end."""

    mesh_to_body: float
    body_to_mesh: float
    steps: int


def _nearest_distance(points: Tensor, targets: Tensor) -> Tensor:
    return torch.cdist(points, targets).amin(dim=1)


def fit_smplx_to_mesh(model, mesh: TexturedMesh, *, steps: int = 300, samples: int = 3000,
                      seed: int = 0) -> tuple[SmplxFit, MeshFitReport]:
    """Fit SMPL-X's betas, body pose, global orientation, scale and translation to a mesh.

    Minimises the symmetric chamfer distance between ``samples`` random mesh vertices and
    ``samples`` random body vertices per step (Adam), plus small priors on pose and shape
    (``1e-3 |theta|^2 + 1e-3 |beta|^2``). The mesh must face +z with y up, roughly standing.
    Gradients are enabled inside, whatever the caller's grad mode.
    """
    generator = torch.Generator().manual_seed(seed)
    target = mesh.vertices.float()
    body0 = fitted_body(model, SmplxFit(np.zeros(model.num_betas, np.float32),
                                        np.zeros(3, np.float32), np.zeros(63, np.float32),
                                        np.zeros(3, np.float32))).vertices[0].detach()
    height = (target[:, 1].amax() - target[:, 1].amin()) / (body0[:, 1].amax() - body0[:, 1].amin())
    params = {
        "betas": torch.zeros(1, model.num_betas), "body_pose": torch.zeros(1, 63),
        "global_orient": torch.zeros(1, 3), "log_scale": height.log().reshape(1),
        "translation": ((target.amax(0) + target.amin(0)) / 2
                        - height * (body0.amax(0) + body0.amin(0)) / 2)[None],
    }
    for value in params.values():
        value.requires_grad_(True)
    optimizer = torch.optim.Adam(params.values(), lr=0.02)

    def body_vertices() -> Tensor:
        out = posed_body(model, params["body_pose"], params["global_orient"],
                         betas=params["betas"])
        return out.vertices[0] * params["log_scale"].exp() + params["translation"][0]

    for _ in range(steps):
        with torch.enable_grad():
            verts = body_vertices()
            a = target[torch.randint(len(target), (samples,), generator=generator)]
            b = verts[torch.randint(len(verts), (samples,), generator=generator)]
            loss = (_nearest_distance(a, b).mean() + _nearest_distance(b, a).mean()
                    + 1e-3 * params["body_pose"].square().sum()
                    + 1e-3 * params["betas"].square().sum())
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        verts = body_vertices()
        a = target[torch.randperm(len(target), generator=generator)[:4 * samples]]
        report = MeshFitReport(mesh_to_body=float(_nearest_distance(a, verts).mean()),
                               body_to_mesh=float(_nearest_distance(verts[::2], target).mean()),
                               steps=steps)
    fit = SmplxFit(betas=params["betas"].detach()[0].numpy(),
                   global_orient=params["global_orient"].detach()[0].numpy(),
                   body_pose=params["body_pose"].detach()[0].numpy(),
                   transl=np.zeros(3, np.float32), scale=float(params["log_scale"].detach().exp()),
                   translation=params["translation"].detach()[0].numpy())
    return fit, report


def _vertex_transforms(model, fit: SmplxFit, body_pose: np.ndarray, global_orient: np.ndarray,
                       weights: Tensor) -> Tensor:
    """(P, 4, 4) linear-blend-skinning transforms (rest -> posed, SMPL-X frame without transl)
    of points with blend weights ``weights`` (P, 55) for the fit's shape in the given pose."""
    from smplx.lbs import batch_rigid_transform, batch_rodrigues, blend_shapes, vertices2joints

    betas = torch.from_numpy(fit.betas[:model.num_betas])[None]
    shaped = model.v_template[None] + blend_shapes(betas, model.shapedirs[..., :betas.shape[1]])
    rest_joints = vertices2joints(model.J_regressor, shaped)  # (1, 55, 3)
    hands = [model.left_hand_mean, model.right_hand_mean]
    if getattr(model, "flat_hand_mean", False):
        hands = [torch.zeros_like(h) for h in hands]
    pose = torch.cat([torch.as_tensor(global_orient, dtype=torch.float32),
                      torch.as_tensor(body_pose, dtype=torch.float32), torch.zeros(9), *hands])
    rotations = batch_rodrigues(pose.reshape(-1, 3))[None]  # (1, 55, 3, 3)
    _, relative = batch_rigid_transform(rotations, rest_joints, model.parents)
    return torch.einsum("pk,kij->pij", weights, relative[0])


@torch.no_grad()
def repose(model, mesh: TexturedMesh, fit: SmplxFit, body_pose: np.ndarray,
           global_orient: np.ndarray) -> tuple[TexturedMesh, Tensor]:
    """The mesh in another pose, and its (23, 3) PoseScore joints, both in the scan's frame.

    Each mesh vertex takes the skinning weights of the nearest vertex of the fitted body; its
    fit-pose transform is undone and the new pose's applied (module docstring).
    """
    body = fitted_body(model, fit).vertices[0]
    transl = torch.from_numpy(fit.transl)
    points = fit.from_scan(mesh.vertices.float())
    nearest = torch.cat([torch.cdist(chunk, body).argmin(dim=1) for chunk in points.split(4096)])
    weights = model.lbs_weights[nearest].float()
    before = _vertex_transforms(model, fit, fit.body_pose, fit.global_orient, weights)
    after = _vertex_transforms(model, fit, body_pose, global_orient, weights)
    local = points - transl
    homogeneous = torch.cat([local, torch.ones(len(local), 1)], dim=1)
    rest = torch.linalg.solve(before, homogeneous[..., None])
    moved = (after @ rest)[:, :3, 0] + transl
    joints = fitted_body(model, fit, body_pose, global_orient).joints[0]
    joints = joints[list(POSESCORE_JOINTS.indices)].float()
    return mesh.with_vertices(fit.to_scan(moved)), fit.to_scan(joints)


# ---- rendering ----------------------------------------------------------------------------------


@dataclass
class ScanViews:
    """A mesh in the rig: normals, colours (V, 3, R, R) float in [0, 1] on white; masks
    (V, 1, R, R) 0/1; the normalisation that placed it."""

    normals: Tensor
    colours: Tensor
    masks: Tensor
    normalization: cameras.BodyNormalization


def lambert(albedo: Tensor, normals: Tensor, mask: Tensor, lights: Tensor, ambient: float
            ) -> Tensor:
    """``albedo * (ambient + (1 - ambient) max(0, n . l))`` on the mask, white elsewhere.
    albedo, normals (V, H, W, 3); mask (V, H, W, 1); lights (V, 3) world directions."""
    shade = ambient + (1 - ambient) * (normals * lights[:, None, None]).sum(-1, keepdim=True
                                                                            ).clamp(min=0)
    return albedo * shade * mask + (1 - mask)


@torch.no_grad()
def render_scan(mesh: TexturedMesh, resolution: int, lights: Tensor, ambient: float
                ) -> ScanViews:
    """Render a mesh (scan frame, metres) in the six body views at side ``resolution``.

    lights: (V, 3) world light directions (:func:`drpose.data.multiview.camera_light`).
    """
    vertices = mesh.vertices.float()[None]
    norm = cameras.normalize_body(vertices)
    matrices = cameras.rows_top_down(cameras.world_to_clip(norm))[0]  # (V, 4, 4)
    pos = cameras.transform_points(vertices, matrices[None])[0].contiguous()
    rast = rasterize(pos, mesh.faces, (resolution, resolution))
    mask = (rast[..., 3:] > 0).float()
    n = interpolate(vertex_normals(vertices, mesh.faces.long()).float(), rast, mesh.faces)
    n = F.normalize(n, dim=-1) * mask
    colour = lambert(mesh.albedo(rast), n, mask, lights, ambient).clamp(0, 1)
    mask = mask.permute(0, 3, 1, 2)
    return ScanViews(normals=encode_normals(n.permute(0, 3, 1, 2), mask),
                     colours=colour.permute(0, 3, 1, 2), masks=mask, normalization=norm)



# ---- samples for the multi-view renders ---------------------------------------------------------

MAX_FIT_ERROR = 0.03  # metres: a worse chamfer fit means the mesh is not a standing human


@dataclass
class ScanSample:
    """One posed scan: the mesh (scan frame), its (23, 3) PoseScore joints, and the SMPL-X
    body_pose (63,) / global_orient (3,) of the pose."""

    mesh: TexturedMesh
    joints: Tensor
    body_pose: np.ndarray
    global_orient: np.ndarray


def subject_meshes(root: str | Path, model, fits: str | Path | None = None
                   ) -> Iterator[ScanSample]:
    """Every subject of a THuman2.1-layout folder in its fitted pose (files read one at a
    time)."""
    for subject in scan_subjects(root, fits):
        fit = load_smplx_fit(subject.fit, num_betas=model.num_betas)
        yield ScanSample(load_textured_mesh(subject.mesh), posescore_joints(model, fit),
                         fit.body_pose, fit.global_orient)


def reposed_meshes(path: str | Path, model, body_poses: np.ndarray, global_orients: np.ndarray,
                   *, fit_steps: int = 300, seed: int = 0) -> Iterator[ScanSample]:
    """One mesh, fitted by SMPL-X (:func:`fit_smplx_to_mesh`), posed into each of the poses
    ``body_poses`` (N, 63) / ``global_orients`` (N, 3). Raises :class:`ScanError` when the fit's
    mean chamfer distance exceeds ``MAX_FIT_ERROR``."""
    mesh = load_textured_mesh(path)
    fit, report = fit_smplx_to_mesh(model, mesh, steps=fit_steps, seed=seed)
    error = max(report.mesh_to_body, report.body_to_mesh)
    if error > MAX_FIT_ERROR:
        raise ScanError(f"{path}: SMPL-X fits the mesh only to {error * 100:.1f} cm (mean "
                        f"chamfer distance; at most {MAX_FIT_ERROR * 100:.0f} cm): is it a "
                        "standing person, y up, facing +z, in metres?")
    print(f"fitted SMPL-X to {path}: {report.mesh_to_body * 100:.2f} cm mesh -> body, "
          f"{report.body_to_mesh * 100:.2f} cm body -> mesh")
    for body_pose, global_orient in zip(body_poses, global_orients, strict=True):
        posed, joints = repose(model, mesh, fit, body_pose, global_orient)
        yield ScanSample(posed, joints, np.asarray(body_pose, np.float32),
                         np.asarray(global_orient, np.float32))
