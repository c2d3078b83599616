"""SMPL-X body joint positions without skinning, for fitting and pose features.

``smplx.SMPLX.forward`` skins all 10,475 vertices; the 22 body joints (SMPL-X joints 0-21) only
need the rest joints ``J = J_regressor @ (v_template + shapedirs · betas)`` and the rigid chain
``smplx.lbs.batch_rigid_transform``. This module does exactly that with smplx's own functions, so
its joints equal ``model(...).joints[:, :22]`` (checked in tests/test_motion.py) at a fraction of
the cost.
"""

from __future__ import annotations

import functools

import torch
from smplx.lbs import batch_rigid_transform, batch_rodrigues

NUM_BODY_JOINTS = 22  # pelvis + 21 body joints; their parents are all among them


class BodyJoints(torch.nn.Module):
    """Posed SMPL-X joints 0-21 for a fixed body shape.

    Args:
        model: a loaded ``smplx.SMPLX`` (e.g. :func:`drpose.body.load_smplx`).
        betas: (S,) shape coefficients, zeros when None.
    """

    def __init__(self, model: torch.nn.Module, betas: torch.Tensor | None = None) -> None:
        super().__init__()
        shapedirs = model.shapedirs.detach()
        template = model.v_template.detach()
        if betas is not None:
            count = min(betas.shape[-1], shapedirs.shape[-1])
            template = template + torch.einsum(
                "vcs,s->vc", shapedirs[..., :count], betas[:count].to(template)
            )
        rest = model.J_regressor.detach()[:NUM_BODY_JOINTS] @ template
        self.register_buffer("rest_joints", rest)  # (22, 3) metres
        self.parents = model.parents.detach()[:NUM_BODY_JOINTS].clone()

    @classmethod
    @functools.cache
    def default(cls) -> BodyJoints:
        """For the default body of :func:`drpose.body.load_smplx`, betas = 0 (cached)."""
        from drpose.body import load_smplx

        return cls(load_smplx())

    def forward(
        self,
        global_orient: torch.Tensor,
        body_pose: torch.Tensor,
        transl: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Joints (B, 22, 3) in metres for global_orient (B, 3), body_pose (B, 63) axis-angle and
        optional transl (B, 3), matching smplx's convention (rotation about the rest pelvis)."""
        batch = global_orient.shape[0]
        dtype = global_orient.dtype
        pose = torch.cat([global_orient, body_pose], dim=1).reshape(-1, 3)
        rotations = batch_rodrigues(pose).reshape(batch, NUM_BODY_JOINTS, 3, 3)
        rest = self.rest_joints.to(dtype).expand(batch, -1, -1)
        joints, _ = batch_rigid_transform(rotations, rest, self.parents, dtype=dtype)
        if transl is not None:
            joints = joints + transl[:, None, :]
        return joints
