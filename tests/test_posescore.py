import pytest
import torch

from drpose.models import SkeletonNet
from drpose.ops import pose_heatmap_loss_reference
from drpose.render import cameras
from drpose.reward import PoseScore, latents_from_rows


def _reward(**options) -> PoseScore:
    torch.manual_seed(0)
    return PoseScore(SkeletonNet(channels=(16, 32)), sigma=1.5, **options)


def _joints(batch: int) -> tuple[torch.Tensor, cameras.BodyNormalization]:
    generator = torch.Generator().manual_seed(1)
    joints = torch.randn(batch, 23, 3, generator=generator) * 0.4 + torch.tensor([0.0, 1.0, 0.0])
    norm = cameras.BodyNormalization(center=torch.tensor([[0.0, 1.0, 0.0]]).repeat(batch, 1),
                                     scale=torch.full((batch,), 0.5))
    return joints, norm


def test_latents_from_rows_follows_the_pipeline_layout():
    batch, views = 2, 6
    rows = torch.arange(2 * batch * views, dtype=torch.float32)[:, None, None, None]
    rows = rows.expand(-1, 4, 3, 3)
    out = latents_from_rows(rows, views)
    assert out.shape == (batch, views, 8, 3, 3)
    for b in range(batch):
        for v in range(views):
            assert torch.all(out[b, v, :4] == b * views + v)  # normal half first
            assert torch.all(out[b, v, 4:] == batch * views + b * views + v)  # colour half
    with pytest.raises(ValueError, match="rows"):
        latents_from_rows(rows[:5], views)


def test_matches_the_reference_loss_and_normalisation():
    reward = _reward()
    joints, norm = _joints(3)
    latents = torch.randn(3, 6, 8, 8, 8)
    score = reward(latents, joints, norm)
    with torch.no_grad():
        logits = reward.skel_net(latents.flatten(0, 1)).unflatten(0, (3, 6))
    keypoints, visible = cameras.project_joints(joints, None, (16, 16), normalization=norm)
    expected = -pose_heatmap_loss_reference(logits, keypoints, visible, sigma=1.5,
                                            reduction="none")
    assert score.shape == (3,)
    torch.testing.assert_close(score, expected, atol=1e-5, rtol=1e-5)
    # normalised joints without a normalisation give the same score
    torch.testing.assert_close(reward(latents, norm.apply(joints)), score, atol=1e-5, rtol=1e-5)


def test_fused_and_reference_backends_agree():
    joints, norm = _joints(2)
    latents = torch.randn(2, 6, 8, 8, 8)
    fused = _reward(backend="cpu")(latents, joints, norm)
    reference = _reward(backend="torch")(latents, joints, norm)
    torch.testing.assert_close(fused, reference, atol=1e-5, rtol=1e-5)


def test_differentiable_in_latents_and_skel_net_frozen():
    reward = _reward()
    reward.train()  # g_skel stays in eval mode
    assert not reward.skel_net.training
    joints, norm = _joints(2)
    latents = torch.randn(2, 6, 8, 8, 8, requires_grad=True)
    reward(latents, joints, norm).sum().backward()
    assert latents.grad is not None and latents.grad.abs().sum() > 0
    assert all(not p.requires_grad and p.grad is None for p in reward.skel_net.parameters())
    # the gradient is the score's: a small step along it raises the score
    with torch.no_grad():
        before = reward(latents, joints, norm).sum()
        after = reward(latents + 1e-2 * latents.grad / latents.grad.norm(), joints, norm).sum()
    assert after > before


def test_lpips_term_from_a_given_module():
    def l1_distance(pred, target):  # a stand-in perceptual distance: (N, 3, H, W) -> (N,)
        assert pred.shape == target.shape and pred.shape[1] == 3
        assert pred.min() >= -1 and pred.max() <= 1
        return (pred - target).abs().mean(dim=(1, 2, 3))

    joints, norm = _joints(2)
    latents = torch.randn(2, 6, 8, 8, 8, requires_grad=True)
    plain = _reward()(latents, joints, norm)
    with_lpips = _reward(lpips=l1_distance, lpips_weight=0.5)(latents, joints, norm)
    assert torch.all(with_lpips < plain)
    with_lpips.sum().backward()
    assert latents.grad.abs().sum() > 0


def test_input_checks():
    reward = _reward()
    joints, _ = _joints(2)
    with pytest.raises(ValueError, match="latents"):
        reward(torch.randn(2, 5, 8, 8, 8), joints)
    with pytest.raises(ValueError, match="joints"):
        reward(torch.randn(2, 6, 8, 8, 8), joints[:1])


def test_pair_accuracy_of_a_trained_skel_net(tiny_skel):
    """On held-out poses, a sample's latents score higher with its own joints than with another
    sample's in at least 90% of the ordered pairs."""
    _, metrics = tiny_skel
    assert metrics["pairs"] >= 30
    assert metrics["pair_accuracy"] >= 0.9, metrics
    assert metrics["posescore_own"] > metrics["posescore_other"]
