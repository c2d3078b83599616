import pytest
import torch

from drpose.models import SkeletonNet


def test_shapes():
    net = SkeletonNet(channels=(16, 32)).eval()
    out = net(torch.randn(5, 8, 6, 10))
    assert out.shape == (5, 23, 12, 20)  # map_scale 2
    fixed = SkeletonNet(channels=(16, 32), map_size=24, num_joints=7)
    assert fixed(torch.randn(2, 8, 8, 8)).shape == (2, 7, 24, 24)
    assert fixed.output_size((96, 96)) == (24, 24)


def test_gradients_reach_the_input_and_every_parameter():
    net = SkeletonNet(channels=(16, 32))
    latents = torch.randn(3, 8, 8, 8, requires_grad=True)
    net(latents).square().mean().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    assert all(p.grad is not None for p in net.parameters())


def test_views_are_independent_rows():
    net = SkeletonNet(channels=(16, 32)).eval()
    latents = torch.randn(4, 8, 8, 8)
    with torch.no_grad():
        torch.testing.assert_close(net(latents)[2:3], net(latents[2:3]), atol=1e-5, rtol=1e-5)


def test_save_and_load(tmp_path):
    torch.manual_seed(0)
    net = SkeletonNet(channels=(16, 32), map_size=20).eval()
    net.save_pretrained(tmp_path)
    loaded = SkeletonNet.from_pretrained(tmp_path, local_files_only=True).eval()
    latents = torch.randn(2, 8, 8, 8)
    with torch.no_grad():
        assert torch.equal(net(latents), loaded(latents))
    assert loaded.config.map_size == 20


def test_input_check():
    with pytest.raises(ValueError, match=r"\(N, 8, h, w\)"):
        SkeletonNet(channels=(16, 32))(torch.randn(2, 4, 8, 8))
