"""drpose.ops.rasterize / interpolate: C++ kernel against the torch reference, both against an
independent ray caster (trimesh + embree), gradients against autograd and finite differences."""

import math
import warnings

import pytest
import torch
import trimesh

from drpose import _extension
from drpose.body import StandInModelWarning, load_smplx, posed_body
from drpose.ops.rasterize import (
    _interpolate_op,
    _rasterize_op,
    interpolate,
    interpolate_reference,
    rasterize,
    rasterize_reference,
)
from drpose.render import cameras

needs_ext = pytest.mark.skipif(_extension.load() is None, reason="drpose._C is not built")


def _soup(n_images: int, n_tris: int, seed: int, perspective: bool, dtype=torch.float64):
    """Random overlapping triangles; with ``perspective`` w varies and some vertices have w <= 0
    or z outside [-w, w], so clipping and homogeneous rasterization are exercised."""
    g = torch.Generator().manual_seed(seed)
    pos = torch.rand(n_images, 3 * n_tris, 4, generator=g, dtype=dtype) * 2.4 - 1.2
    if perspective:
        pos[..., 3] = torch.rand(n_images, 3 * n_tris, generator=g, dtype=dtype) * 1.6 - 0.2
        pos[..., :3] *= pos[..., 3:].abs() + 0.1
    else:
        pos[..., 3] = 1.0
    tri = torch.randperm(3 * n_tris, generator=g).reshape(n_tris, 3).to(torch.int32)
    return pos, tri


def _mesh_clip(mesh: trimesh.Trimesh, n_images: int, perspective: bool):
    """Clip-space vertices of ``mesh`` seen from ``n_images`` cameras around it (y up)."""
    v = torch.tensor(mesh.vertices, dtype=torch.float64)
    mats = []
    for i in range(n_images):
        a = 2 * math.pi * i / n_images + 0.3
        rot = torch.tensor([[math.cos(a), 0, -math.sin(a)], [0, 1, 0],
                            [math.sin(a), 0, math.cos(a)]], dtype=torch.float64)
        mats.append(rot)
    cam = torch.einsum("nij,vj->nvi", torch.stack(mats), v)  # camera frame, looking down -z
    cam[..., 2] -= 3.0
    if perspective:  # focal 2.5, near 1, far 5
        n_, f_ = 1.0, 5.0
        clip = torch.stack([2.5 * cam[..., 0], 2.5 * cam[..., 1],
                            (-(f_ + n_) * cam[..., 2] - 2 * f_ * n_) / (f_ - n_), -cam[..., 2]], -1)
    else:  # orthographic box [-1.2, 1.2]^2, near 1, far 5
        clip = torch.stack([cam[..., 0] / 1.2, cam[..., 1] / 1.2, (-cam[..., 2] - 3.0) / 2.0,
                            torch.ones_like(cam[..., 0])], -1)
    return clip, torch.tensor(mesh.faces, dtype=torch.int32)


def _meshes():
    torus = trimesh.creation.torus(major_radius=0.7, minor_radius=0.25)
    capsule = trimesh.creation.capsule(height=1.2, radius=0.35)
    capsule.apply_transform(trimesh.transformations.rotation_matrix(1.2, [1.0, 0.2, 0.0]))
    return {
        "icosphere": trimesh.creation.icosphere(subdivisions=3, radius=0.9),
        "capsule": capsule,
        "torus": torus,  # not convex: self-occlusion
    }


# ---- C++ kernel against the reference ---------------------------------------------------------


@needs_ext
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("perspective", "size"), [(False, (23, 17)), (True, (16, 31))])
def test_cpu_matches_reference_on_triangle_soup(dtype, perspective, size):
    pos, tri = _soup(3, 40, seed=1, perspective=perspective, dtype=dtype)
    ours = rasterize(pos, tri, size, backend="cpu")
    ref = rasterize_reference(pos, tri, size)
    assert (ours[..., 3] > 0).any() and (ours[..., 3] == 0).any()
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)  # same expressions, same order


@needs_ext
@pytest.mark.parametrize("perspective", [False, True])
def test_cpu_matches_reference_on_meshes(perspective):
    clip, tri = _mesh_clip(_meshes()["torus"], 2, perspective)
    ours = rasterize(clip.float(), tri, (40, 33), backend="cpu")
    ref = rasterize_reference(clip.float(), tri, (40, 33))
    torch.testing.assert_close(ours, ref, rtol=0, atol=0)


# ---- against an independent implementation: embree ray casting --------------------------------


def _ray_cast(mesh: trimesh.Trimesh, clip: torch.Tensor, size, perspective: bool):
    """Triangle ids (H, W) (-1 = miss) and z/w depth of the first hit of the ray through each
    pixel centre (rows bottom-up), by trimesh + embree on the mesh in clip-space coordinates."""
    from trimesh.ray.ray_pyembree import RayMeshIntersector

    h, w = size
    py, px = torch.meshgrid((2 * torch.arange(h, dtype=torch.float64) + 1) / h - 1,
                            (2 * torch.arange(w, dtype=torch.float64) + 1) / w - 1, indexing="ij")
    # perspective: the mesh in NDC (x/w, y/w, z/w) is a mesh seen orthographically
    ndc = clip[:, :3] / clip[:, 3:] if perspective else clip[:, :3]
    scene = trimesh.Trimesh(ndc.numpy(), mesh.faces, process=False)
    origins = torch.stack([px, py, torch.full_like(px, -3.0)], -1).reshape(-1, 3)
    dirs = torch.zeros_like(origins)
    dirs[:, 2] = 1.0
    tri_ids, rays, locs = RayMeshIntersector(scene).intersects_id(
        origins.numpy(), dirs.numpy(), multiple_hits=False, return_locations=True)
    ids = torch.full((h * w,), -1, dtype=torch.long)
    depth = torch.zeros(h * w, dtype=torch.float64)
    ids[torch.as_tensor(rays)] = torch.as_tensor(tri_ids)
    depth[torch.as_tensor(rays)] = torch.as_tensor(locs[:, 2])
    return ids.reshape(h, w), depth.reshape(h, w)


def _compare_with_ray_casting(mesh: trimesh.Trimesh, clip: torch.Tensor, tri: torch.Tensor,
                              size, perspective: bool) -> tuple[int, int]:
    """Check the C++ kernel's images of ``clip`` (N, V, 4) against embree; returns the number of
    pixels covered by either and the number whose triangle ids differ."""
    rast = rasterize(clip.float(), tri, size, backend="cpu")
    n_pixels = n_mismatch = 0
    for i in range(clip.shape[0]):
        ids_ray, depth_ray = _ray_cast(mesh, clip[i], size, perspective)
        ids = rast[i, ..., 3].long() - 1
        both = (ids >= 0) & (ids_ray >= 0)
        mismatch = ids != ids_ray
        n_pixels += int(((ids >= 0) | (ids_ray >= 0)).sum())
        n_mismatch += int(mismatch.sum())
        # depths agree wherever both hit (also where neighbouring triangles disagree on the id)
        torch.testing.assert_close(rast[i, ..., 2][both].double(), depth_ray[both],
                                   rtol=0, atol=2e-5)
        # every disagreement is a pixel centre within float32 noise of a triangle edge
        u, v = rast[i, ..., 0], rast[i, ..., 1]
        edge_distance = torch.minimum(torch.minimum(u, v), 1 - u - v)
        assert (edge_distance[mismatch & (ids >= 0)] < 1e-4).all()
        if (mismatch & (ids < 0)).any():  # embree hit, we did not: our nearest edge is there too
            ours_near = _reference_edge_distance(clip[i], tri, size, ids_ray, mismatch & (ids < 0))
            assert (ours_near < 1e-4).all()
    return n_pixels, n_mismatch


@needs_ext
@pytest.mark.parametrize("perspective", [False, True])
@pytest.mark.parametrize("name", ["icosphere", "capsule", "torus"])
def test_cpu_matches_embree_ray_casting(name, perspective):
    # Perspective: triangles are flat in NDC too (z/w is affine in screen space), so the NDC mesh
    # cast orthographically is the exact independent answer for ids and z/w.
    mesh = _meshes()[name]
    size = (96, 80)
    clip, tri = _mesh_clip(mesh, 2, perspective)
    n_pixels, n_mismatch = _compare_with_ray_casting(mesh, clip, tri, size, perspective)
    assert n_pixels > 0.15 * clip.shape[0] * size[0] * size[1]
    assert n_mismatch / n_pixels < 2e-3  # measured: 0 of 273K covered pixels at 256², all cases


@needs_ext
def test_cpu_matches_embree_on_the_body_in_the_rig():
    """The stand-in SMPL-X body (20,908 triangles) in PSHuman's 6 orthographic views."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StandInModelWarning)
        body = posed_body(load_smplx(), torch.zeros(1, 63))
    matrices = cameras.world_to_clip(cameras.normalize_body(body.vertices))
    clip = cameras.transform_points(body.vertices, matrices)[0].double()  # (6, N, 4), w = 1
    mesh = trimesh.Trimesh(body.vertices[0].numpy(), body.faces.numpy(), process=False)
    n_pixels, n_mismatch = _compare_with_ray_casting(mesh, clip, body.faces.to(torch.int32),
                                                     (128, 128), perspective=False)
    assert n_pixels > 10_000
    assert n_mismatch / n_pixels < 2e-3  # measured: 0 of 12K (128²) and of 48K (256²) pixels


def _reference_edge_distance(clip, tri, size, ids_ray, where):
    """Smallest barycentric of the ray-cast triangle at the given pixels (negative = outside)."""
    from drpose.ops.rasterize import _barycentrics, _pixel_centres

    h, w = size
    rows, cols = where.nonzero(as_tuple=True)
    px, py = _pixel_centres(h, w, torch.float64, clip.device)
    uv = _barycentrics(clip[tri.long()[ids_ray[rows, cols]]], px[cols], py[rows])
    return torch.minimum(torch.minimum(uv[:, 0], uv[:, 1]), 1 - uv[:, 0] - uv[:, 1]).abs()


# ---- conventions and edge cases --------------------------------------------------------------


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_ext), "torch"])
def test_conventions_rows_bottom_up_barycentrics_and_ties(backend):
    # one triangle in the lower-left corner: vertex 0 at the bottom-left
    pos = torch.tensor([[[-1.0, -1.0, 0.5, 1.0], [0.0, -1.0, 0.5, 1.0], [-1.0, 0.0, 0.5, 1.0],
                         [-1.0, -1.0, 0.5, 1.0], [0.0, -1.0, 0.5, 1.0], [-1.0, 0.0, 0.5, 1.0]]])
    tri = torch.tensor([[0, 1, 2], [3, 4, 5]], dtype=torch.int32)  # two identical triangles
    rast = rasterize(pos, tri, (8, 8), backend=backend)
    ids = rast[0, ..., 3]
    assert ids[0, 0] == 1 and ids[7, 7] == 0 and ids[0, 7] == 0  # row 0 is the bottom row
    assert (ids[ids > 0] == 1).all()  # equal depth: the lowest triangle id wins
    # pixel (0, 0) centre (-0.875, -0.875): weights of vertices 0, 1 are 0.75, 0.125
    torch.testing.assert_close(rast[0, 0, 0], torch.tensor([0.75, 0.125, 0.5, 1.0]))
    # a quad whose diagonal passes through pixel centres: no holes, ties to the lower id
    quad = torch.tensor([[[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [1.0, 1.0, 0.0, 1.0],
                          [-1.0, 1.0, 0.0, 1.0]]])
    rast = rasterize(quad, torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32), (4, 4),
                     backend=backend)
    ids = rast[0, ..., 3]
    assert (ids > 0).all()
    assert (ids.diagonal() == 1).all()


@pytest.mark.parametrize("backend", [pytest.param("cpu", marks=needs_ext), "torch"])
def test_clipping_and_empty_inputs(backend):
    size = (10, 12)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    behind = torch.tensor([[[-1.0, -1.0, 0.0, -1.0], [1.0, -1.0, 0.0, -1.0],
                            [0.0, 1.0, 0.0, -0.5]]])
    assert (rasterize(behind, tri, size, backend=backend) == 0).all()
    off_screen = torch.tensor([[[2.0, 2.0, 0.0, 1.0], [3.0, 2.0, 0.0, 1.0], [2.0, 3.0, 0.0, 1.0]]])
    assert (rasterize(off_screen, tri, size, backend=backend) == 0).all()
    empty = rasterize(off_screen, torch.zeros(0, 3, dtype=torch.int32), size, backend=backend)
    assert empty.shape == (1, 10, 12, 4) and (empty == 0).all()
    # a screen-filling quad whose z goes from -2 (left) to 2 (right): only |z/w| <= 1 is drawn
    ramp = torch.tensor([[[-1.0, -1.0, -2.0, 1.0], [1.0, -1.0, 2.0, 1.0], [1.0, 1.0, 2.0, 1.0],
                          [-1.0, 1.0, -2.0, 1.0]]])
    rast = rasterize(ramp, torch.tensor([[0, 1, 2], [0, 2, 3]], dtype=torch.int32), size,
                     backend=backend)
    covered_cols = (rast[0, ..., 3] > 0).all(0)
    assert covered_cols.tolist() == [False] * 3 + [True] * 6 + [False] * 3
    assert rast[0, ..., 2][rast[0, ..., 3] > 0].abs().max() <= 1


@needs_ext
def test_checks_name_the_argument():
    pos = torch.zeros(1, 3, 4)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    with pytest.raises(ValueError, match="pos"):
        rasterize(pos[..., :3], tri, (4, 4))
    with pytest.raises(TypeError, match="tri must be int32"):
        rasterize(pos, tri.long(), (4, 4))
    with pytest.raises(ValueError, match="resolution"):
        rasterize(pos, tri, (0, 4))
    with pytest.raises(ValueError, match="nvdiffrast"):
        rasterize(pos, tri, (4, 4), backend="nvdiffrast")
    # an image of a million pixels squared: refused before allocating, naming size and limit
    with pytest.raises(ValueError, match=r"resolution=\(1000000, 1000000\).*GiB.*GiB of memory"):
        rasterize(pos, tri, (1_000_000, 1_000_000))
    with pytest.raises(ValueError, match="attr"):
        interpolate(torch.zeros(2, 3, 1), torch.zeros(3, 4, 4, 4), tri)


# ---- gradients --------------------------------------------------------------------------------


def test_reference_gradcheck():
    pos, tri = _soup(2, 6, seed=3, perspective=True)
    attr = torch.randn(2, pos.shape[1], 2, dtype=torch.float64)
    pos.requires_grad_(True)
    attr.requires_grad_(True)

    def render(p, a):
        return interpolate_reference(a, rasterize_reference(p, tri, (7, 6)), tri)

    assert (rasterize_reference(pos, tri, (7, 6))[..., 3] > 0).sum() > 10
    assert torch.autograd.gradcheck(render, (pos, attr), eps=1e-7, atol=1e-6)


@needs_ext
def test_cpu_gradients_match_reference():
    pos, tri = _soup(2, 30, seed=4, perspective=True)
    attr = torch.randn(1, pos.shape[1], 3, dtype=torch.float64)  # broadcast over images
    grad_out = torch.randn(2, 19, 21, 3, dtype=torch.float64)
    grads = []
    for backend in ("cpu", "torch"):
        p = pos.clone().requires_grad_(True)
        a = attr.clone().requires_grad_(True)
        out = interpolate(a, rasterize(p, tri, (19, 21), backend=backend), tri)
        out.backward(grad_out)
        grads.append((p.grad, a.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert grads[0][0][..., 2].abs().max() == 0 and grads[0][0].abs().max() > 0


@needs_ext
def test_cpu_gradcheck_and_opcheck():
    pos, tri = _soup(1, 5, seed=5, perspective=True)
    pos.requires_grad_(True)
    assert torch.autograd.gradcheck(lambda p: rasterize(p, tri, (6, 5), backend="cpu")[..., :2],
                                    (pos,), eps=1e-7, atol=1e-6)
    torch.library.opcheck(_rasterize_op, (pos.detach().float(), tri, 6, 5))


# ---- interpolate: the C++ kernel (the maths of csrc/rasterize_math.h) against the reference ---


def _rendered(n_images: int, seed: int, dtype=torch.float64):
    pos, tri = _soup(n_images, 30, seed=seed, perspective=True)
    rast = rasterize_reference(pos, tri, (19, 21)).to(dtype)
    assert (rast[..., 3] > 0).any() and (rast[..., 3] == 0).any()
    return pos, tri, rast


@needs_ext
@pytest.mark.parametrize(("dtype", "atol"), [(torch.float64, 0), (torch.float32, 0),
                                             (torch.float16, 2e-3), (torch.bfloat16, 2e-2)])
@pytest.mark.parametrize("images", [1, 3])
def test_interpolate_cpu_matches_reference(dtype, atol, images):
    pos, tri, rast = _rendered(3, seed=6, dtype=torch.float32)
    g = torch.Generator().manual_seed(7)
    attr = torch.randn(images, pos.shape[1], 5, generator=g).to(dtype)  # 1: broadcast
    ours = interpolate(attr, rast, tri, backend="cpu")
    ref = interpolate_reference(attr, rast, tri)
    assert ours.dtype == dtype and ours.shape == (3, 19, 21, 5)
    # float32/64: the reference's expressions in its order, bit for bit; half precision is
    # computed in float32 by the kernel, in the attribute's dtype by the reference
    torch.testing.assert_close(ours, ref, rtol=0 if atol == 0 else 1e-2, atol=atol)


@needs_ext
@pytest.mark.parametrize("images", [1, 2])
@pytest.mark.parametrize("rast_dtype", [torch.float32, torch.float64])
def test_interpolate_cpu_gradients_match_reference(images, rast_dtype):
    pos, tri, rast = _rendered(2, seed=8, dtype=rast_dtype)
    g = torch.Generator().manual_seed(9)
    attr = torch.randn(images, pos.shape[1], 3, generator=g, dtype=torch.float64)
    grad_out = torch.randn(2, 19, 21, 3, generator=g, dtype=torch.float64)
    grads = []
    for backend in ("cpu", "torch"):
        a = attr.clone().requires_grad_(True)
        r = rast.clone().requires_grad_(True)
        interpolate(a, r, tri, backend=backend).backward(grad_out)
        grads.append((a.grad, r.grad))
    torch.testing.assert_close(grads[0][0], grads[1][0])
    torch.testing.assert_close(grads[0][1], grads[1][1])
    assert grads[0][1][..., 2:].abs().max() == 0 and grads[0][1].abs().max() > 0


@needs_ext
def test_cpu_float32_gradients_match_reference():
    pos, tri = _soup(2, 30, seed=10, perspective=True, dtype=torch.float32)
    grad_uv = torch.randn(2, 17, 15, 4, generator=torch.Generator().manual_seed(11))
    grad_uv[..., 2:] = 0
    grads = []
    for backend in ("cpu", "torch"):
        p = pos.clone().requires_grad_(True)
        rasterize(p, tri, (17, 15), backend=backend).backward(grad_uv)
        grads.append(p.grad)
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-4, atol=1e-4)
    assert grads[0].abs().max() > 0


@needs_ext
def test_interpolate_gradcheck_and_opcheck():
    pos, tri, rast = _rendered(1, seed=12)
    attr = torch.randn(1, pos.shape[1], 2, dtype=torch.float64, requires_grad=True)
    uv = rast[..., :2].clone().requires_grad_(True)

    def render(a, uv):
        return interpolate(a, torch.cat([uv, rast[..., 2:]], -1), tri, backend="cpu")

    assert torch.autograd.gradcheck(render, (attr, uv), eps=1e-7, atol=1e-6)
    torch.library.opcheck(_interpolate_op, (attr.detach().float(), rast.float(), tri))


# ---- bad indices: every backend raises the same clear error ----------------------------------

BACKENDS_HERE = [pytest.param("cpu", marks=needs_ext), "torch"]


@pytest.mark.parametrize("backend", BACKENDS_HERE)
@pytest.mark.parametrize("bad", [3, 7, -1])
def test_out_of_range_vertex_index_is_named(backend, bad):
    pos = torch.tensor([[[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]]])
    tri = torch.tensor([[0, 1, 2], [0, bad, 2]], dtype=torch.int32)
    with pytest.raises(ValueError, match=rf"rasterize\(\): tri\[1\] holds vertex index {bad}, "
                                         r"but pos has 3 vertices \(valid indices 0..2\)"):
        rasterize(pos, tri, (4, 4), backend=backend)
    rast = rasterize(pos, tri[:1], (4, 4), backend=backend)
    with pytest.raises(ValueError, match=rf"interpolate\(\): tri\[1\] holds vertex index {bad}, "
                                         r"but attr has 3 vertices"):
        interpolate(torch.zeros(1, 3, 2), rast, tri, backend=backend)


@pytest.mark.parametrize("backend", BACKENDS_HERE)
def test_rast_ids_beyond_tri_are_named(backend):
    pos = torch.tensor([[[-1.0, -1.0, 0.0, 1.0], [1.0, -1.0, 0.0, 1.0], [0.0, 1.0, 0.0, 1.0]]])
    tri = torch.tensor([[0, 1, 2], [2, 1, 0]], dtype=torch.int32)
    rast = rasterize(pos, tri, (4, 4), backend=backend)
    assert rast[..., 3].max() == 1
    rast[0, 0, 0, 3] = 2  # a triangle id that tri[:1] does not have
    with pytest.raises(ValueError, match=r"rast names triangle id 2 .* tri has 1 triangles; "
                                         r"pass the tri that was given to rasterize\(\)"):
        interpolate(torch.zeros(1, 3, 2), rast, tri[:1], backend=backend)
    with pytest.raises(TypeError, match="rast must be float32 or float64"):
        interpolate(torch.zeros(1, 3, 2), rast.half(), tri, backend=backend)


@needs_ext
def test_cpu_kernels_refuse_bad_indices_themselves():
    """The C++ entry points raise too (they never read out of bounds), not only the checks."""
    ext = _extension.require()
    pos = torch.zeros(1, 3, 4)
    bad = torch.tensor([[0, 1, 3]], dtype=torch.int32)
    with pytest.raises(RuntimeError, match="vertex index outside"):
        ext.rasterize_forward_cpu(pos, bad, 4, 4)
    with pytest.raises(RuntimeError, match="vertex index outside"):
        ext.interpolate_forward_cpu(torch.zeros(1, 3, 2), torch.zeros(1, 4, 4, 4), bad)
    rast = torch.zeros(1, 4, 4, 4)
    rast[0, 1, 1, 3] = 5
    with pytest.raises(RuntimeError, match="rast names triangle id 5"):
        ext.interpolate_forward_cpu(torch.zeros(1, 3, 2), rast, bad.clamp(max=2))


def test_cuda_backend_needs_cuda_tensors():
    pos = torch.zeros(1, 3, 4)
    tri = torch.tensor([[0, 1, 2]], dtype=torch.int32)
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        rasterize(pos, tri, (4, 4), backend="cuda")
    with pytest.raises(ValueError, match="backend='cuda' needs CUDA tensors"):
        interpolate(torch.zeros(1, 3, 2), torch.zeros(1, 4, 4, 4), tri, backend="cuda")
