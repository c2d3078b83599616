"""Meshing the stand-in body: smooth union of primitives -> closed genus-0 triangle mesh.

Steps: sample the smooth-union signed distance on a regular grid (each primitive evaluated only
inside its own bounding box), extract the zero level set with marching cubes (PyMCubes),
decimate it with quadric edge collapses (fast-simplification) to an exact face count, then
relax the vertices tangentially and project them back onto the level set.
"""

from __future__ import annotations

from collections.abc import Sequence

import fast_simplification
import mcubes
import numpy as np

from drpose.body._standin_shape import Primitive, smooth_min


def union_sdf(primitives: Sequence[Primitive], points: np.ndarray) -> np.ndarray:
    """Smooth-union signed distance (m) of points (N, 3), float64 (N,)."""
    d = primitives[0].sdf(points)
    for prim in primitives[1:]:
        d = smooth_min(d, prim.sdf(points), prim.blend)
    return d


def _grid_sdf(primitives: Sequence[Primitive], voxel: float) -> tuple[np.ndarray, np.ndarray]:
    """The union's signed distance sampled on a grid; exact near the surface, saturated far away.

    Primitive i is evaluated only in its bounding box grown by its blend width + margin_i, with
    margin_i = the largest blend width of the primitives after it + 2 voxels: outside that box it
    cannot change any value below margin_i, and a value above margin_i is too far from the surface
    to matter to any later blend. Far samples keep the fill value 1 m. (Putting the small, sharply
    blended primitives last keeps their boxes small.)

    Returns (values (X, Y, Z) float32, origin (3,)): sample (i, j, k) is at
    origin + voxel * (i, j, k).
    The grid origin is offset by a fraction of a voxel so that no flat face of a primitive (the
    soles) coincides with a grid plane, which would give marching cubes zero-thickness sheets.
    """
    later_blend = [max((p.blend for p in primitives[i + 1 :]), default=0.0)
                   for i in range(len(primitives))]  # fmt: skip
    boxes = [p.bounds(0.0) for p in primitives]
    lo = np.min([b[0] for b in boxes], axis=0) - 3 * voxel + 0.37 * voxel
    hi = np.max([b[1] for b in boxes], axis=0) + 3 * voxel
    shape = np.ceil((hi - lo) / voxel).astype(int) + 1
    values = np.full(tuple(shape), 1.0, dtype=np.float32)
    for prim, blend_after in zip(primitives, later_blend, strict=True):
        box_lo, box_hi = prim.bounds(blend_after + 2 * voxel + prim.blend)
        i0 = np.clip(np.floor((box_lo - lo) / voxel).astype(int), 0, shape)
        i1 = np.clip(np.ceil((box_hi - lo) / voxel).astype(int) + 1, 0, shape)
        x, y, z = (lo[k] + voxel * np.arange(i0[k], i1[k], dtype=np.float32) for k in range(3))
        d = prim.sdf_xyz(x[:, None, None], y[None, :, None], z[None, None, :])
        block = (slice(i0[0], i1[0]), slice(i0[1], i1[1]), slice(i0[2], i1[2]))
        values[block] = smooth_min(values[block], d.astype(np.float32), np.float32(prim.blend))
    return values, lo


def check_closed_genus0(faces: np.ndarray, num_vertices: int) -> None:
    """Raise RuntimeError unless faces form one closed, oriented, genus-0 manifold surface."""
    edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
    directed = np.unique(edges, axis=0)
    if len(directed) != len(edges):
        raise RuntimeError("stand-in mesh: a directed edge is used twice (not oriented manifold)")
    undirected, counts = np.unique(np.sort(edges, axis=1), axis=0, return_counts=True)
    if not (counts == 2).all():
        raise RuntimeError("stand-in mesh: not closed (an edge has != 2 faces)")
    used = np.unique(faces)
    euler = len(used) - len(undirected) + len(faces)
    if euler != 2 or len(used) != num_vertices:
        raise RuntimeError(f"stand-in mesh: Euler characteristic {euler} (expected 2, genus 0)")


def _split_longest_edges(verts: np.ndarray, faces: np.ndarray, count: int):
    """Split the `count` longest edges at their midpoints (each split: +1 vertex, +2 faces)."""
    verts, faces = list(map(tuple, verts)), [list(f) for f in faces]
    for _ in range(count):
        v = np.asarray(verts)
        f = np.asarray(faces)
        edges = np.concatenate([f[:, [0, 1]], f[:, [1, 2]], f[:, [2, 0]]])
        lengths = np.linalg.norm(v[edges[:, 0]] - v[edges[:, 1]], axis=1)
        a, b = edges[int(np.argmax(lengths))]
        verts.append(tuple((v[a] + v[b]) / 2))
        mid = len(verts) - 1
        for face in [face for face in faces if a in face and b in face]:
            # Replace the triangle (a, b, c) (in its own orientation) by (a, mid, c), (mid, b, c).
            i = face.index(a)
            j = face.index(b)
            first, second = (a, b) if (i + 1) % 3 == j else (b, a)
            c = next(x for x in face if x not in (a, b))
            face[:] = [first, mid, c]
            faces.append([mid, second, c])
    return np.asarray(verts), np.asarray(faces)


def _flip_edges(verts: np.ndarray, faces: np.ndarray, min_cos_dihedral: float = 0.95):
    """One pass of Delaunay edge flips on a closed oriented mesh; returns the new faces.

    Edge a-b between triangles (a, b, c) and (b, a, d) becomes c-d, giving (a, d, c) and
    (d, b, c), when the angles at c and d sum to more than pi (the pair is not Delaunay), the two
    triangles are nearly coplanar (the surface does not change), c-d is not an edge yet and a, b
    keep at least 4 neighbours. Flipped pairs of one pass touch no common triangle.
    """
    faces = faces.copy()
    n_faces = len(faces)
    half = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])  # a -> b
    opposite = np.concatenate([faces[:, 2], faces[:, 0], faces[:, 1]])
    face_of = np.tile(np.arange(n_faces), 3)
    n = len(verts)
    key = half[:, 0] * n + half[:, 1]
    twin_key = half[:, 1] * n + half[:, 0]
    order = np.argsort(key)
    twin = order[np.searchsorted(key[order], twin_key)]
    first = np.flatnonzero(half[:, 0] < half[:, 1])  # one half-edge per edge
    a, b = half[first, 0], half[first, 1]
    c, d = opposite[first], opposite[twin[first]]
    f1, f2 = face_of[first], face_of[twin[first]]

    def angle(p, q, r):  # angle at p in triangle (p, q, r)
        u, v = verts[q] - verts[p], verts[r] - verts[p]
        cos = (u * v).sum(1) / np.maximum(np.linalg.norm(u, axis=1) * np.linalg.norm(v, axis=1),
                                          1e-18)  # fmt: skip
        return np.arccos(np.clip(cos, -1.0, 1.0))

    def normal(p, q, r):
        nrm = np.cross(verts[q] - verts[p], verts[r] - verts[p])
        return nrm / np.maximum(np.linalg.norm(nrm, axis=1, keepdims=True), 1e-18)

    excess = angle(c, a, b) + angle(d, b, a) - np.pi
    flat = (normal(a, b, c) * normal(b, a, d)).sum(1) > min_cos_dihedral
    keeps_side = (normal(a, d, c) * normal(d, b, c)).sum(1) > min_cos_dihedral
    candidates = np.flatnonzero((excess > 1e-6) & flat & keeps_side)
    candidates = candidates[np.argsort(-excess[candidates], kind="stable")]
    edges = set(np.minimum(half[:, 0], half[:, 1]) * n + np.maximum(half[:, 0], half[:, 1]))
    degree = np.bincount(half[:, 0], minlength=n)
    touched = np.zeros(n_faces, dtype=bool)
    for e in candidates:
        ea, eb, ec, ed, g1, g2 = a[e], b[e], c[e], d[e], f1[e], f2[e]
        new_key = min(ec, ed) * n + max(ec, ed)
        if touched[g1] or touched[g2] or new_key in edges or min(degree[ea], degree[eb]) <= 3:
            continue
        faces[g1] = (ea, ed, ec)
        faces[g2] = (ed, eb, ec)
        touched[[g1, g2]] = True
        edges.discard(min(ea, eb) * n + max(ea, eb))
        edges.add(new_key)
        degree[[ea, eb]] -= 1
        degree[[ec, ed]] += 1
    return faces


def _relax(
    primitives: Sequence[Primitive], verts: np.ndarray, faces: np.ndarray, iterations: int
) -> tuple[np.ndarray, np.ndarray]:
    """Rounds of Delaunay edge flips and tangential Laplacian smoothing, each followed by a
    projection onto the level set. Returns (verts, faces)."""
    n = len(verts)
    eps = 1e-5
    offsets = np.eye(3) * eps
    for _ in range(iterations):
        faces = _flip_edges(verts, faces)
        edges = np.concatenate([faces[:, [0, 1]], faces[:, [1, 2]], faces[:, [2, 0]]])
        degree = np.bincount(edges[:, 0], minlength=n).astype(np.float64)
        centroid = np.zeros_like(verts)
        np.add.at(centroid, edges[:, 0], verts[edges[:, 1]])
        centroid /= degree[:, None]
        normal = vertex_normals(verts, faces)
        step = centroid - verts
        step -= (step * normal).sum(1, keepdims=True) * normal
        verts = verts + 0.5 * step
        for _ in range(2):  # Newton steps onto the zero level set
            d = union_sdf(primitives, verts)
            grad = np.stack([(union_sdf(primitives, verts + o) - d) / eps for o in offsets], axis=1)
            verts = verts - (d / np.maximum((grad * grad).sum(1), 1e-6))[:, None] * grad
    return verts, faces


def vertex_normals(verts: np.ndarray, faces: np.ndarray) -> np.ndarray:
    """Area-weighted unit vertex normals (V, 3) of a triangle mesh."""
    tri = verts[faces]
    face_n = np.cross(tri[:, 1] - tri[:, 0], tri[:, 2] - tri[:, 0])
    normals = np.zeros_like(verts)
    for k in range(3):
        np.add.at(normals, faces[:, k], face_n)
    return normals / np.maximum(np.linalg.norm(normals, axis=1, keepdims=True), 1e-12)


def mesh_primitives(
    primitives: Sequence[Primitive],
    num_faces: int,
    voxel: float = 0.004,
    relax_iterations: int = 6,
) -> tuple[np.ndarray, np.ndarray]:
    """Closed genus-0 mesh of the primitives' smooth union with exactly num_faces triangles.

    Args:
        primitives: the solids, in union order.
        num_faces: wanted triangle count (even; the mesh then has num_faces / 2 + 2 vertices).
        voxel: marching-cubes grid step (m).
        relax_iterations: rounds of edge flips, tangential smoothing and projection after
            decimation.

    Returns:
        vertices (num_faces / 2 + 2, 3) float64 (m) and faces (num_faces, 3) int64, outward
        (counter-clockwise seen from outside) orientation.
    """
    if num_faces % 2:
        raise ValueError(f"num_faces must be even for a closed genus-0 mesh, got {num_faces}")
    values, origin = _grid_sdf(primitives, voxel)
    # PyMCubes orients triangles for a field that is positive inside.
    verts, faces = mcubes.marching_cubes(-values, 0.0)
    # Decimate in voxel units: the decimator's error thresholds are not scale-free, and in
    # metres it can produce non-manifold collapses.
    verts, faces = fast_simplification.simplify(verts, faces, target_count=num_faces)
    verts, faces = verts * voxel + origin, faces.astype(np.int64)
    if len(faces) > num_faces:
        raise RuntimeError(f"decimation stopped at {len(faces)} faces (> {num_faces})")
    verts, faces = _split_longest_edges(verts, faces, (num_faces - len(faces)) // 2)
    check_closed_genus0(faces, len(verts))
    verts, faces = _relax(primitives, verts, faces, relax_iterations)
    check_closed_genus0(faces, len(verts))
    tri = verts[faces]
    signed_volume = np.einsum("ij,ij->i", tri[:, 0], np.cross(tri[:, 1], tri[:, 2])).sum() / 6
    if signed_volume < 0:
        faces = faces[:, ::-1].copy()
    return verts, faces
