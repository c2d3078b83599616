"""The public ops' device kernels against their references, on ``DRPOSE_TEST_DEVICE``.

By default (the CPU, CI) the Triton kernels run under ``TRITON_INTERPRET=1`` at small shapes
and the native backend is the C++ one. ``make gpu-test`` runs this file with
``DRPOSE_TEST_DEVICE=cuda``: the compiled Triton kernels and ``csrc/*.cu`` on CUDA tensors, at
PSHuman's shapes (heatmaps of 6 views x 23 joints at 96² and 192², row attention over rows of
6 views x 96 tokens at head dim 64 in fp32 / fp16 / bf16), and a UNet call of the small
PSHuman-shaped pipeline with the row-attention kernel against the same call in torch.
"""

from __future__ import annotations

import os

import pytest
import torch

from drpose import _extension
from drpose.ops import (
    interpolate,
    pose_heatmap_loss,
    pose_heatmap_loss_reference,
    rasterize,
    row_attention,
    row_attention_reference,
)
from drpose.ops.rasterize import interpolate_reference, rasterize_reference
from tests.test_pose_heatmap_loss import grads, make_inputs
from tests.test_rasterize import _soup
from tests.test_row_attention import (
    Shape,
    assert_within_torch_error,
    forward_and_grads,
    plain_torch_attention,
    random_qkv,
)

DEVICE = torch.device(os.environ.get("DRPOSE_TEST_DEVICE", "cpu"))
ON_GPU = DEVICE.type == "cuda"
if ON_GPU and not torch.cuda.is_available():
    raise RuntimeError("DRPOSE_TEST_DEVICE=cuda, but torch sees no CUDA device: install the "
                       "CUDA build of torch (README, GPU machines)")
NATIVE = "cuda" if ON_GPU else "cpu"
needs_native = pytest.mark.skipif(
    (_extension.load() is None) or (ON_GPU and not _extension.has_cuda()),
    reason=f"drpose._C is not built with its {NATIVE} kernels")

HEATMAP_SHAPES = ([(2, 6, 23, 96, 96), (2, 6, 23, 192, 192)] if ON_GPU
                  else [(1, 2, 3, 9, 11)])
ATTENTION_SHAPES = ([Shape(batch=1, views=6, height=96, width=96, heads=5, head_dim=64),
                     Shape(batch=1, views=6, height=48, width=48, heads=10, head_dim=64)]
                    if ON_GPU else [Shape(batch=1, views=6, height=2, width=3, heads=1,
                                          head_dim=16)])
ATTENTION_DTYPES = ([torch.float32, torch.float16, torch.bfloat16] if ON_GPU
                    else [torch.float32])  # the interpreter's half tl.dot is not a GPU's


@pytest.mark.parametrize("backend", ["triton", pytest.param(NATIVE, marks=needs_native)])
@pytest.mark.parametrize("shape", HEATMAP_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16] if ON_GPU else [torch.float32])
def test_heatmap_loss_on_device_matches_reference(backend, shape, dtype):
    logits, keypoints, visible = make_inputs(shape, torch.float64, spread=1.4)
    logits = logits.to(dtype).double()  # what the kernel sees, exactly, for the reference
    upstream = torch.randn(shape[0], dtype=torch.float64)
    expected = grads(pose_heatmap_loss_reference, logits, keypoints, visible, upstream,
                     sigma=2.5)
    moved = [t.to(DEVICE) for t in (logits.to(dtype), keypoints.float(), visible,
                                    upstream.float())]
    got = grads(pose_heatmap_loss, *moved[:3], moved[3], sigma=2.5, backend=backend)
    tol = 2e-5 if dtype == torch.float32 else 1e-2  # bf16: the logits' gradient is bf16
    for name, e, g in zip(("loss", "grad_logits", "grad_keypoints"), expected, got, strict=True):
        assert g.device.type == DEVICE.type, name
        scale = e.abs().max().item() + 1e-30
        torch.testing.assert_close(g.cpu().double(), e, rtol=tol, atol=tol * scale, msg=name)


@pytest.mark.parametrize("shape", ATTENTION_SHAPES, ids=str)
@pytest.mark.parametrize("dtype", ATTENTION_DTYPES, ids=str)
def test_row_attention_on_device_within_torch_error(shape, dtype):
    q, k, v = random_qkv(shape, dtype)
    grad_out = random_qkv(shape, dtype, seed=1)[0]
    opts = dict(views=shape.views, height=shape.height)
    exact = forward_and_grads(lambda *t: row_attention_reference(*t, **opts), q.double(),
                              k.double(), v.double(), grad_out.double())
    on = [t.to(DEVICE) for t in (q, k, v, grad_out)]
    baseline = forward_and_grads(lambda *t: plain_torch_attention(*t, **opts), *on)
    got = forward_and_grads(lambda *t: row_attention(*t, **opts, backend="triton"), *on)
    assert all(g.dtype == dtype and g.device.type == DEVICE.type for g in got)
    assert_within_torch_error([g.cpu() for g in got], [b.cpu() for b in baseline], exact)


@needs_native
def test_rasterize_and_interpolate_on_device_match_reference():
    size = (96, 80) if ON_GPU else (12, 10)
    pos, tri = _soup(2, 60 if ON_GPU else 8, seed=3, perspective=True, dtype=torch.float32)
    want = rasterize_reference(pos.double(), tri, size)
    rast = rasterize(pos.to(DEVICE), tri.to(DEVICE), size, backend=NATIVE)
    assert rast.device.type == DEVICE.type
    rast = rast.cpu()
    same = rast[..., 3] == want[..., 3].float()  # triangle ids (float32 ties may differ)
    assert (rast[..., 3] > 0).any() and same.float().mean() > 0.999
    torch.testing.assert_close(rast[same][:, :3].double(), want[same][:, :3], rtol=0,
                               atol=1e-4)
    attr = torch.randn(2, pos.shape[1], 5, generator=torch.Generator().manual_seed(0))
    image = interpolate(attr.to(DEVICE), rast.to(DEVICE), tri.to(DEVICE), backend=NATIVE)
    torch.testing.assert_close(image.cpu(), interpolate_reference(attr, rast, tri), rtol=1e-5,
                               atol=1e-5)


def test_unet_call_with_the_kernels_matches_torch_attention(tmp_path):
    from drpose.pipelines import MultiViewPipeline
    from drpose.pipelines.random_pshuman import write_random_pshuman

    folder = write_random_pshuman(tmp_path / "pipe", small=True, dtype=torch.float32)
    pipe = MultiViewPipeline.from_pretrained(folder).to(DEVICE)
    generator = torch.Generator().manual_seed(0)
    image = torch.rand(1, 3, pipe.image_side, pipe.image_side, generator=generator)
    cond = pipe.encode_condition(image.to(DEVICE), generator=generator)
    latents = pipe.prepare_latents(cond, generator)
    t = torch.tensor(500, device=DEVICE)
    outs = {}
    kernel = "triton" if ON_GPU else "cpu"
    for backend in (kernel, "torch"):
        pipe.unet.set_row_attention_backend(backend)
        with torch.no_grad():
            outs[backend] = pipe.unet_step(latents, t, cond, 1.0).float().cpu()
    assert torch.isfinite(outs["torch"]).all()
    torch.testing.assert_close(outs[kernel], outs["torch"], rtol=1e-3, atol=1e-3)
