"""g_skel: latent multi-view images -> skeleton-map logits, one map per PoseScore joint.

Input: the latents of one view in both domains, concatenated on channels: ``[normal (4) |
colour (4)]`` = 8 channels. Both, because the reward scores the model's whole output: a wrong
limb in either domain should cost, and the two carry complementary evidence (the normal map
shows the geometry and which way limbs face; the colour map separates body parts by clothing,
which disambiguates left/right and crossing limbs). Views are independent samples (B*V rows);
the view itself is not an input (the skeleton maps follow the image, whatever the camera).

Output: logits ``(B*V, J, H, W)`` at the heatmap resolution, by default twice the latent side
(16 -> 32 at the CPU default; ``map_size`` fixes it, e.g. 96 or 256 at PSHuman's 96 x 96
latents). Architecture: a small U-Net (two levels, GroupNorm + SiLU residual blocks, a skip),
bilinear upsampling to the map size, one residual block and a 1 x 1 head.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import Tensor, nn


class _Block(nn.Module):
    """Residual block: (GroupNorm, SiLU, 3x3 conv) x 2 + a 1x1 skip when widths differ."""

    def __init__(self, in_channels: int, out_channels: int, groups: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.GroupNorm(min(groups, in_channels), in_channels), nn.SiLU(),
            nn.Conv2d(in_channels, out_channels, 3, padding=1),
            nn.GroupNorm(groups, out_channels), nn.SiLU(),
            nn.Conv2d(out_channels, out_channels, 3, padding=1),
        )
        self.skip = (nn.Identity() if in_channels == out_channels
                     else nn.Conv2d(in_channels, out_channels, 1))

    def forward(self, x: Tensor) -> Tensor:
        return self.skip(x) + self.body(x)


class SkeletonNet(ModelMixin, ConfigMixin):
    """g_skel (module docstring).

    Args:
        in_channels: latent channels per view (8: normal | colour latents).
        num_joints: output maps per view (23 PoseScore joints).
        channels: widths of the two U-Net levels.
        map_size: side of the output maps; None = ``map_scale`` x the latent side.
        map_scale: output side / latent side when ``map_size`` is None.
        norm_groups: GroupNorm groups.
    """

    @register_to_config
    def __init__(self, in_channels: int = 8, num_joints: int = 23,
                 channels: tuple[int, int] = (48, 96), map_size: int | None = None,
                 map_scale: int = 2, norm_groups: int = 8) -> None:
        super().__init__()
        c0, c1 = channels
        self.stem = nn.Conv2d(in_channels, c0, 3, padding=1)
        self.enc0 = _Block(c0, c0, norm_groups)
        self.down = nn.Conv2d(c0, c1, 3, stride=2, padding=1)
        self.enc1 = _Block(c1, c1, norm_groups)
        self.mid = _Block(c1, c1, norm_groups)
        self.dec0 = _Block(c1 + c0, c0, norm_groups)
        self.head_block = _Block(c0, c0, norm_groups)
        self.head = nn.Sequential(nn.GroupNorm(norm_groups, c0), nn.SiLU(),
                                  nn.Conv2d(c0, num_joints, 1))

    def output_size(self, latent_size: tuple[int, int]) -> tuple[int, int]:
        """(H, W) of the maps for latents of ``latent_size`` (h, w)."""
        if self.config.map_size is not None:
            return (self.config.map_size, self.config.map_size)
        return (latent_size[0] * self.config.map_scale, latent_size[1] * self.config.map_scale)

    def forward(self, latents: Tensor) -> Tensor:
        """``(N, in_channels, h, w)`` latents (h, w even) -> ``(N, num_joints, H, W)`` logits."""
        if latents.dim() != 4 or latents.shape[1] != self.config.in_channels:
            raise ValueError(f"SkeletonNet: latents must be (N, {self.config.in_channels}, h, w), "
                             f"got {tuple(latents.shape)}")
        x0 = self.enc0(self.stem(latents))
        x1 = self.mid(self.enc1(self.down(x0)))
        up = F.interpolate(x1, size=x0.shape[-2:], mode="nearest")
        x = self.dec0(torch.cat([up, x0], dim=1))
        x = F.interpolate(x, size=self.output_size(tuple(latents.shape[-2:])), mode="bilinear",
                          align_corners=False)
        return self.head(self.head_block(x))

