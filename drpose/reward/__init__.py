"""drpose.reward: PoseScore, the differentiable pose reward on generated multi-view latents."""

from drpose.reward.posescore import PoseScore, latents_from_rows

__all__ = ["PoseScore", "latents_from_rows"]
