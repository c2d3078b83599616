"""Triangle rasterization and attribute interpolation with nvdiffrast's contract, on every machine.

``rasterize(pos, tri, resolution)`` and ``interpolate(attr, rast, tri)`` follow nvdiffrast's torch
API (``nvdiffrast.torch.rasterize`` / ``interpolate``, instanced mode, no antialiasing):

* ``pos`` (N, V, 4) clip-space vertices (OpenGL: x right, y up, visible where -w <= x, y, z <= w),
  ``tri`` (T, 3) int32 vertex indices shared by the N images.
* ``rast`` (N, H, W, 4) = (u, v, z/w, triangle_id + 1), all zero where no triangle covers the
  pixel. Rows are bottom-up (OpenGL): row r, column c samples the pixel centre
  ``(px, py) = ((2c + 1) / W - 1, (2r + 1) / H - 1)``. u and v are the perspective-correct
  barycentric weights of the triangle's vertices 0 and 1 (vertex 2 gets 1 - u - v):
  with ``X_i = x_i - px w_i``, ``Y_i = y_i - py w_i`` and ``e_0 = X_1 Y_2 - X_2 Y_1`` (cyclic),
  ``u = e_0 / S``, ``v = e_1 / S``, ``S = e_0 + e_1 + e_2``; the pixel is covered when all
  ``e_k / S >= 0``. Both faces are drawn (no culling).
* Clipping: a covered point is kept only when its clip coordinates satisfy ``-w <= z <= w``
  (near and far planes; this drops everything behind the camera, w <= 0), which is what clipping
  the triangle against those planes before rasterizing gives, as nvdiffrast does. Triangles
  crossing w = 0 are handled (homogeneous rasterization); x and y are clipped by the image.
* Depth test: the smallest z/w wins; at equal depth the lowest triangle id wins (draw order with
  a strict "less" test, as OpenGL's GL_LESS). A pixel centre exactly on an edge counts as inside
  both triangles sharing it; the depth test then resolves it.
* Gradients (as nvdiffrast without ``antialias``): ``interpolate`` gives gradients w.r.t. ``attr``
  and w.r.t. the (u, v) channels of ``rast``; ``rasterize`` turns the gradient of (u, v) into a
  gradient w.r.t. ``pos`` (x, y, w; not z) through the barycentric formula above at fixed pixel
  centres. The z/w and id channels carry no gradient; there are no visibility (edge) gradients.
  nvdiffrast adds 1e-6 to S in its backward; we do not (the difference is far below float32
  resolution except for degenerate triangles).

Backends: ``"nvdiffrast"`` (CUDA tensors, when ``import nvdiffrast.torch`` works), ``"cuda"``
(the CUDA kernels ``csrc/rasterize_cuda.cu``, when drpose._C was built with CUDA), ``"cpu"`` (the
C++/OpenMP kernels ``csrc/rasterize_cpu.cpp``), ``"torch"`` (the reference: brute force over all
triangles, for tests and small inputs). The cuda and cpu kernels share their per-triangle and
per-pixel maths (``csrc/rasterize_math.h``), forward and backward, so they give the same images.
``"auto"``: for CUDA tensors nvdiffrast, then cuda, then the CPU kernel (copied to the CPU and
back); for CPU tensors cpu (torch with one warning when drpose._C is not built). nvdiffrast is
not on PyPI and is licensed for non-commercial use only (NVIDIA Source Code License); GPU users
who may use it install it from a local clone, against the torch they already have:

    git clone https://github.com/NVlabs/nvdiffrast && pip install ./nvdiffrast --no-build-isolation

Every backend checks that ``tri`` names existing vertices (and, for ``interpolate``, that
``rast``'s ids name existing triangles) and raises the same ValueError otherwise.
"""

from __future__ import annotations

import functools
import importlib
import warnings

import torch
from torch import Tensor

from drpose import _extension
from drpose.ops._dispatch import (
    check_cuda_backend,
    check_output_size,
    check_same_device,
    check_size,
    check_tensor,
)

RASTERIZE_BACKENDS = ("auto", "torch", "cpu", "cuda", "nvdiffrast")
INTERPOLATE_BACKENDS = ("auto", "torch", "cpu", "cuda", "nvdiffrast")
_REFERENCE_CHUNK = 1 << 21  # images x pixels x triangles evaluated at once by the reference


# ---- the maths shared by the reference and the backward --------------------------------------


def _pixel_centres(height: int, width: int, dtype: torch.dtype,
                   device: torch.device) -> tuple[Tensor, Tensor]:
    """NDC centres: px (W,) = (2c + 1) / W - 1, py (H,) = (2r + 1) / H - 1 (rows bottom-up)."""
    px = (2.0 * torch.arange(width, dtype=dtype, device=device) + 1.0) / width - 1.0
    py = (2.0 * torch.arange(height, dtype=dtype, device=device) + 1.0) / height - 1.0
    return px, py


def _edge_coefficients(p: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """p (..., 3, 4) triangle clip vertices -> A, B, C (..., 3): e_k = (C_k + A_k px) + B_k py."""
    x, y, w = p[..., 0], p[..., 1], p[..., 3]
    xi, yi, wi = x.roll(-1, -1), y.roll(-1, -1), w.roll(-1, -1)  # vertex k + 1
    xj, yj, wj = x.roll(-2, -1), y.roll(-2, -1), w.roll(-2, -1)  # vertex k + 2
    return yi * wj - yj * wi, xj * wi - xi * wj, xi * yj - xj * yi


def _edges(p: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """Homogeneous edge functions (..., 3) of triangles p (..., 3, 4) at NDC points px, py (...)."""
    a, b, c = _edge_coefficients(p)
    return (c + a * px[..., None]) + b * py[..., None]


def _barycentrics(p: Tensor, px: Tensor, py: Tensor) -> Tensor:
    """Perspective-correct (u, v) (..., 2) of triangles p (..., 3, 4) at NDC points (...)."""
    e = _edges(p, px, py)
    s = (e[..., 0] + e[..., 1]) + e[..., 2]
    return e[..., :2] / s[..., None]


# ---- reference ---------------------------------------------------------------------------------


def rasterize_reference(pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> Tensor:
    """The specification of :func:`rasterize` in plain torch (module docstring for the maths).

    Brute force: every pixel is tested against every triangle, in float64; for small inputs.
    Differentiable by autograd w.r.t. ``pos`` through (u, v) only, as nvdiffrast.
    """
    _check_rasterize_inputs(pos, tri, resolution)
    height, width = resolution
    n, t = pos.shape[0], tri.shape[0]
    out = pos.new_zeros(n, height, width, 4)
    if t == 0 or n == 0:
        return out
    px, py = _pixel_centres(height, width, torch.float64, pos.device)
    py, px = torch.meshgrid(py, px, indexing="ij")
    px, py = px.reshape(-1), py.reshape(-1)  # (P,)
    tri_long = tri.long()
    with torch.no_grad():
        verts = pos.double()[:, tri_long]  # (N, T, 3, 4)
        a, b, c = _edge_coefficients(verts)  # (N, T, 3)
        zs, ws = verts[..., 2], verts[..., 3]
        ids = torch.empty(n, px.numel(), dtype=torch.long, device=pos.device)
        depth = torch.empty(n, px.numel(), dtype=torch.float64, device=pos.device)
        step = max(1, _REFERENCE_CHUNK // (t * n))
        for start in range(0, px.numel(), step):
            cx, cy = px[start:start + step, None, None], py[start:start + step, None, None]
            e = (c[:, None] + a[:, None] * cx) + b[:, None] * cy  # (N, P, T, 3)
            s = (e[..., 0] + e[..., 1]) + e[..., 2]
            inside = torch.where(s[..., None] > 0, e >= 0, (s[..., None] < 0) & (e <= 0))
            z = ((e[..., 0] * zs[:, None, :, 0] + e[..., 1] * zs[:, None, :, 1])
                 + e[..., 2] * zs[:, None, :, 2]) / s
            w = ((e[..., 0] * ws[:, None, :, 0] + e[..., 1] * ws[:, None, :, 1])
                 + e[..., 2] * ws[:, None, :, 2]) / s
            keep = inside.all(-1) & (w > 0) & (z >= -w) & (z <= w)
            d = torch.where(keep, z / w, torch.inf)
            best, arg = d.min(dim=-1)  # first (lowest id) among equal minima
            ids[:, start:start + step] = torch.where(torch.isfinite(best), arg, -1)
            depth[:, start:start + step] = best
    covered = ids >= 0  # (N, P)
    img, pix = covered.nonzero(as_tuple=True)
    tri_of = ids[img, pix]
    uv = _barycentrics(pos[img[:, None], tri_long[tri_of]].double(), px[pix], py[pix])  # (M, 2)
    values = torch.cat([uv.to(pos.dtype), depth[img, pix, None].to(pos.dtype),
                        (tri_of + 1)[:, None].to(pos.dtype)], dim=-1)
    out = out.reshape(n, -1, 4).index_put((img, pix), values)
    return out.reshape(n, height, width, 4)


def interpolate_reference(attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
    """The specification of :func:`interpolate`: ``u a_0 + v a_1 + (1 - u - v) a_2`` per pixel.

    Evaluated at the covered pixels only; background pixels are zero.
    """
    _check_interpolate_inputs(attr, rast, tri)
    out = attr.new_zeros(*rast.shape[:3], attr.shape[-1])
    ids = rast[..., 3].detach().long() - 1  # (N, H, W)
    img, row, col = (ids >= 0).nonzero(as_tuple=True)
    corners = tri.long()[ids[img, row, col]]  # (M, 3)
    source = img if attr.shape[0] > 1 else torch.zeros_like(img)
    a = attr[source[:, None], corners]  # (M, 3, A)
    uv = rast[img, row, col, :2].to(attr.dtype)  # (M, 2)
    u, v = uv[:, :1], uv[:, 1:]
    return out.index_put((img, row, col), u * a[:, 0] + v * a[:, 1] + (1 - u - v) * a[:, 2])


# ---- public ops --------------------------------------------------------------------------------


def rasterize(pos: Tensor, tri: Tensor, resolution: tuple[int, int], *,
              backend: str = "auto") -> Tensor:
    """Rasterize triangles with nvdiffrast's contract (see the module docstring).

    Args:
        pos: (N, V, 4) float32 (float64 too, except on nvdiffrast) clip-space vertices.
        tri: (T, 3) int32 vertex indices in [0, V), T may be 0.
        resolution: (H, W) in pixels.
        backend: ``"auto"`` | ``"torch"`` | ``"cpu"`` | ``"cuda"`` | ``"nvdiffrast"``.

    Returns:
        rast (N, H, W, 4) in pos's dtype and on its device: (u, v, z/w, triangle_id + 1), zeros
        for background, rows bottom-up. Differentiable w.r.t. ``pos`` through (u, v).
    """
    _check_rasterize_inputs(pos, tri, resolution)
    device = check_same_device("rasterize", pos=pos, tri=tri)
    backend = _resolve("rasterize", backend, RASTERIZE_BACKENDS, device)
    height, width = int(resolution[0]), int(resolution[1])
    if backend == "torch":
        return rasterize_reference(pos, tri, (height, width))
    if backend == "nvdiffrast":
        dr = _nvdiffrast()
        rast, _ = dr.rasterize(_nvdiffrast_context(device), pos.contiguous(), tri.contiguous(),
                               (height, width), grad_db=False)
        return rast
    if backend == "cpu" and device.type != "cpu":  # CUDA without a GPU kernel: CPU, and back
        return _rasterize_op(pos.cpu().contiguous(), tri.cpu().contiguous(), height,
                             width).to(device)
    return _rasterize_op(pos.contiguous(), tri.contiguous(), height, width)


def interpolate(attr: Tensor, rast: Tensor, tri: Tensor, *, backend: str = "auto") -> Tensor:
    """Interpolate vertex attributes over the rasterized pixels, as nvdiffrast's ``interpolate``.

    Args:
        attr: (N, V, A) or (1, V, A) (broadcast over images) float vertex attributes.
        rast: (N, H, W, 4) output of :func:`rasterize`.
        tri: (T, 3) int32, the triangles given to :func:`rasterize`.
        backend: ``"auto"`` (as :func:`rasterize`) | ``"torch"`` | ``"cpu"`` | ``"cuda"`` |
            ``"nvdiffrast"``.

    Returns:
        (N, H, W, A) in attr's dtype, zero on background pixels. Differentiable w.r.t. ``attr``
        and the (u, v) channels of ``rast``.
    """
    _check_interpolate_inputs(attr, rast, tri)
    device = check_same_device("interpolate", attr=attr, rast=rast, tri=tri)
    backend = _resolve("interpolate", backend, INTERPOLATE_BACKENDS, device)
    if backend == "nvdiffrast":
        out, _ = _nvdiffrast().interpolate(attr.contiguous(), rast.contiguous(), tri.contiguous())
        return out
    if backend == "torch":
        return interpolate_reference(attr, rast, tri)
    if backend == "cpu" and device.type != "cpu":
        return _interpolate_op(attr.cpu().contiguous(), rast.cpu().contiguous(),
                               tri.cpu().contiguous()).to(device)
    return _interpolate_op(attr.contiguous(), rast.contiguous(), tri.contiguous())


# ---- the op library entries: drpose::rasterize, drpose::interpolate and their backwards ------
# Each calls the C++ kernel of the tensors' device (<name>_cpu or <name>_cuda in drpose._C).


def _kernel(name: str, device: torch.device):
    return getattr(_extension.require(), f"{name}_{'cuda' if device.type == 'cuda' else 'cpu'}")


@torch.library.custom_op("drpose::rasterize", mutates_args=())
def _rasterize_op(pos: Tensor, tri: Tensor, height: int, width: int) -> Tensor:
    """rast (N, H, W, 4) of pos (N, V, 4) and tri (T, 3) int32 by the C++/CUDA kernel."""
    return _kernel("rasterize_forward", pos.device)(pos, tri, height, width)


@_rasterize_op.register_fake
def _(pos, tri, height, width):
    return pos.new_empty(pos.shape[0], height, width, 4)


@torch.library.custom_op("drpose::rasterize_backward", mutates_args=())
def _rasterize_backward(grad_rast: Tensor, pos: Tensor, tri: Tensor, rast: Tensor) -> Tensor:
    """grad pos (N, V, 4) from grad rast (N, H, W, 4): d(u, v)/d(x, y, w) at the pixel centres.

    With g_k = dL/de_k = (g_u (δ_k0 - u) + g_v (δ_k1 - v)) / S and e_k = X_{k+1} Y_{k+2} -
    X_{k+2} Y_{k+1}:  dL/dX_i = g_{i-1} Y_{i+1} - g_{i+1} Y_{i+2},
    dL/dY_i = g_{i+1} X_{i+2} - g_{i-1} X_{i+1},  dL/dx_i = dL/dX_i, dL/dy_i = dL/dY_i,
    dL/dw_i = -px dL/dX_i - py dL/dY_i (u, v recomputed from pos in float64, not read from
    rast; ``barycentric_backward`` in csrc/rasterize_math.h).
    """
    return _kernel("rasterize_backward", pos.device)(grad_rast, pos, tri, rast)


@_rasterize_backward.register_fake
def _(grad_rast, pos, tri, rast):
    return torch.empty_like(pos)


def _setup_context(ctx, inputs, output):
    pos, tri, _, _ = inputs
    ctx.save_for_backward(pos, tri, output)


def _backward(ctx, grad_rast):
    pos, tri, rast = ctx.saved_tensors
    return _rasterize_backward(grad_rast.contiguous(), pos, tri, rast), None, None, None


_rasterize_op.register_autograd(_backward, setup_context=_setup_context)


@torch.library.custom_op("drpose::interpolate", mutates_args=())
def _interpolate_op(attr: Tensor, rast: Tensor, tri: Tensor) -> Tensor:
    """(N, H, W, A): u a_0 + v a_1 + (1 - u - v) a_2 of attr (N | 1, V, A) at rast's pixels."""
    return _kernel("interpolate_forward", attr.device)(attr, rast, tri)


@_interpolate_op.register_fake
def _(attr, rast, tri):
    return attr.new_empty(*rast.shape[:3], attr.shape[-1])


@torch.library.custom_op("drpose::interpolate_backward", mutates_args=())
def _interpolate_backward(grad: Tensor, attr: Tensor, rast: Tensor,
                          tri: Tensor) -> tuple[Tensor, Tensor]:
    """grad attr (attr's shape) and grad rast (N, H, W, 4), (u, v) channels only:
    dL/da_0 = u g, dL/da_1 = v g, dL/da_2 = (1 - u - v) g, dL/du = sum_A g (a_0 - a_2),
    dL/dv = sum_A g (a_1 - a_2)."""
    return _kernel("interpolate_backward", attr.device)(grad, attr, rast, tri)


@_interpolate_backward.register_fake
def _(grad, attr, rast, tri):
    return torch.empty_like(attr), torch.empty_like(rast)


def _setup_interpolate(ctx, inputs, output):
    ctx.save_for_backward(*inputs)


def _interpolate_grad(ctx, grad):
    attr, rast, tri = ctx.saved_tensors
    grad_attr, grad_rast = _interpolate_backward(grad.contiguous(), attr, rast, tri)
    return (grad_attr if ctx.needs_input_grad[0] else None,
            grad_rast if ctx.needs_input_grad[1] else None, None)


_interpolate_op.register_autograd(_interpolate_grad, setup_context=_setup_interpolate)


# ---- backends and checks -----------------------------------------------------------------------


@functools.cache
def _nvdiffrast():
    return importlib.import_module("nvdiffrast.torch")


def _has_nvdiffrast() -> bool:
    try:
        _nvdiffrast()
    except ImportError:
        return False
    return True


@functools.cache
def _nvdiffrast_context(device: torch.device):
    return _nvdiffrast().RasterizeCudaContext(device=device)


def _resolve(op: str, backend: str, allowed: tuple[str, ...], device: torch.device) -> str:
    if backend not in allowed:
        raise ValueError(f"{op}(): backend must be one of {allowed}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda" and _has_nvdiffrast():
            return "nvdiffrast"
        if device.type == "cuda" and _extension.has_cuda():
            return "cuda"
        if _extension.load() is None:
            return "torch"
        return "cpu"
    if backend == "nvdiffrast":
        if device.type != "cuda":
            raise ValueError(f"{op}(): backend='nvdiffrast' needs CUDA tensors, got {device}")
        if not _has_nvdiffrast():
            raise RuntimeError(f"{op}(): backend='nvdiffrast' needs nvdiffrast; see the "
                               "drpose.ops.rasterize docstring for how to install it")
    if backend == "cuda":
        check_cuda_backend(op, device)
    if backend == "cpu":
        _extension.require()
    if backend == "torch" and op == "rasterize" and device.type == "cuda":
        warnings.warn("rasterize(): the torch reference is brute force; on CUDA install "
                      "nvdiffrast or build drpose._C with CUDA", RuntimeWarning, stacklevel=3)
    return backend


def _check_rasterize_inputs(pos: Tensor, tri: Tensor, resolution: tuple[int, int]) -> None:
    check_tensor("rasterize", "pos", pos, dims=3, floating=True)
    if pos.shape[-1] != 4:
        raise ValueError(f"rasterize(): pos must have shape (N, V, 4) (clip space), got "
                         f"{tuple(pos.shape)}")
    if pos.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"rasterize(): pos must be float32 or float64, got {pos.dtype}")
    _check_tri("rasterize", tri, pos.shape[1], "pos")
    height, width = check_size("rasterize", "resolution", resolution)
    check_output_size("rasterize", "resolution", resolution, (pos.shape[0], height, width, 4),
                      pos.dtype, pos.device)


def _check_tri(op: str, tri: Tensor, num_vertices: int, source: str) -> None:
    """tri (T, 3) int32 whose indices all name one of the ``num_vertices`` rows of ``source``."""
    check_tensor(op, "tri", tri, dims=2)
    if tri.shape[-1] != 3:
        raise ValueError(f"{op}(): tri must have shape (T, 3), got {tuple(tri.shape)}")
    if tri.dtype != torch.int32:
        raise TypeError(f"{op}(): tri must be int32 (as nvdiffrast), got {tri.dtype}")
    if tri.numel() == 0:
        return
    low, high = (int(x) for x in torch.aminmax(tri))
    if low < 0 or high >= num_vertices:
        bad = low if low < 0 else high
        row = int((tri == bad).any(-1).nonzero()[0])
        raise ValueError(f"{op}(): tri[{row}] holds vertex index {bad}, but {source} has "
                         f"{num_vertices} vertices (valid indices 0..{num_vertices - 1}); every "
                         f"index in tri must name a vertex of {source}")


def _check_rast_ids(rast: Tensor, num_triangles: int) -> None:
    """rast's id channel holds 0 (background) or triangle_id + 1 with triangle_id < T."""
    if rast.numel() == 0:
        return
    high = int(rast[..., 3].detach().max())
    low = int(rast[..., 3].detach().min())
    if low < 0 or high > num_triangles:
        bad = low if low < 0 else high
        raise ValueError(f"interpolate(): rast names triangle id {bad} (channel 3 holds "
                         f"triangle_id + 1), but tri has {num_triangles} triangles; pass the "
                         "tri that was given to rasterize()")


def _check_interpolate_inputs(attr: Tensor, rast: Tensor, tri: Tensor) -> None:
    check_tensor("interpolate", "attr", attr, dims=3, floating=True)
    check_tensor("interpolate", "rast", rast, dims=4, floating=True)
    if rast.shape[-1] != 4:
        raise ValueError(f"interpolate(): rast must have shape (N, H, W, 4), got "
                         f"{tuple(rast.shape)}")
    if rast.dtype not in (torch.float32, torch.float64):
        raise TypeError(f"interpolate(): rast must be float32 or float64 (rasterize()'s output), "
                        f"got {rast.dtype}")
    if attr.shape[0] not in (1, rast.shape[0]):
        raise ValueError(f"interpolate(): attr must have shape (N, V, A) or (1, V, A) with "
                         f"N = {rast.shape[0]} (rast's images), got {tuple(attr.shape)}")
    _check_tri("interpolate", tri, attr.shape[1], "attr")
    _check_rast_ids(rast, tri.shape[0])
