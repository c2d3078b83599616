"""The ``render`` synthesis backend at 768 x 768: samples per second, and where the time goes.

One DrPose15K window (an anchor and 9 neighbours: 10 frames of the packaged CMU sample) through
:class:`drpose.data.synth.RenderSynthesizer` (SMPL-X posing, front-camera normalisation and
projection, rasterization, normal interpolation, palette shading), then its stages alone: the
SMPL-X posing, the rasterizer + normal interpolation, and the RGBA PNG encoding a dataset build
adds. There is no torch baseline for a whole synthesizer (the torch reference rasterizer is a
brute-force specification, hours per frame at this size), so the rows are a breakdown; samples
per second are in each row's ``extra_info`` and printed by the ratio table's time column
(10 frames / median).
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
import torch

from drpose.body import StandInModelWarning, posed_body
from drpose.data.build import encode_png
from drpose.data.synth import FRONT_VIEW, RenderSynthesizer
from drpose.motion.load import default_pose_sequences
from drpose.ops import interpolate, rasterize
from drpose.render import cameras
from drpose.render.conditions import vertex_normals

SIDE = 768
FRAMES = 10
GROUP = f"render synthesizer, {FRAMES} frames at {SIDE}x{SIDE}"


@pytest.fixture(scope="module")
def synth():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", StandInModelWarning)
        return RenderSynthesizer(SIDE, batch_size=FRAMES)


@pytest.fixture(scope="module")
def window():
    clip = default_pose_sequences()[1]
    return clip.take(np.arange(100, 100 + FRAMES))


def record(benchmark, measure, fn, label):
    measure(fn, group=GROUP, label=label, rounds=3)
    benchmark.extra_info["samples_per_second"] = FRAMES / benchmark.stats.stats.median


def bench_render_backend(benchmark, measure, synth, window):
    record(benchmark, measure, lambda: synth(window, seed=0), "render backend (all stages)")


def bench_posing(benchmark, measure, synth, window):
    model = synth.poser.model
    body_pose, orient = torch.from_numpy(window.body_pose), torch.from_numpy(window.global_orient)
    transl = torch.from_numpy(window.transl)

    def pose():
        with torch.no_grad():
            return posed_body(model, body_pose, orient, transl=transl)

    record(benchmark, measure, pose, "SMPL-X posing (smplx)")


def bench_rasterize_interpolate(benchmark, measure, synth, window):
    model, faces = synth.poser.model, synth.poser.faces
    with torch.no_grad():
        body = posed_body(model, torch.from_numpy(window.body_pose),
                          torch.from_numpy(window.global_orient),
                          transl=torch.from_numpy(window.transl))
    norm = cameras.normalize_body(body.vertices)
    matrices = cameras.rows_top_down(cameras.world_to_clip(norm, FRONT_VIEW))
    pos = cameras.transform_points(body.vertices, matrices)[:, 0]
    pos = pos.float().contiguous()
    normals = vertex_normals(body.vertices, body.faces).float()

    def raster():
        rast = rasterize(pos, faces, (SIDE, SIDE))
        return interpolate(normals, rast, faces)

    record(benchmark, measure, raster, "rasterize + interpolate")


def bench_png_encoding(benchmark, measure, synth, window):
    frames = synth(window, seed=0)

    def encode():
        return [encode_png(image, mask) for image, mask in
                zip(frames.images, frames.masks, strict=True)]

    record(benchmark, measure, encode, "RGBA PNG encoding")
