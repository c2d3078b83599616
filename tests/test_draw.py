"""Skeleton overlays: bones land between their joints, invisible joints draw nothing."""

import pytest
import torch

from drpose.render.draw import draw_skeletons


def test_bone_drawn_between_visible_joints_only():
    images = torch.zeros(2, 3, 20, 30)
    keypoints = torch.tensor([[[5.0, 10.0], [25.0, 10.0]]] * 2)
    visible = torch.tensor([[True, True], [True, False]])
    out = draw_skeletons(images, keypoints, visible, parents=(-1, 0))
    assert out.shape == images.shape and images.abs().sum() == 0  # input untouched
    assert out[0, :, 10, 15].sum() > 0  # the bone's middle
    assert out[0, :, 2, 15].sum() == 0  # far from it
    assert out[1, :, 10, 15].sum() == 0  # second joint invisible: no bone
    assert out[1, :, 10, 5].sum() > 0  # but the visible joint is marked


def test_shape_errors():
    with pytest.raises(ValueError, match="N, 3, H, W"):
        draw_skeletons(torch.zeros(3, 8, 8), torch.zeros(3, 1, 2), torch.ones(3, 1, dtype=bool),
                       (-1,))
    with pytest.raises(ValueError, match="parents"):
        draw_skeletons(torch.zeros(1, 3, 8, 8), torch.zeros(1, 2, 2),
                       torch.ones(1, 2, dtype=bool), (-1,))
