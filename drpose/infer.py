"""``python -m drpose.infer IMAGE --out DIR``: one photo of a person -> textured 3D mesh.

Stages (a tqdm bar each; the wall time of each is printed at the end):

1. matting: the person's mask from, in order, ``--mask`` (a greyscale/binary image, white =
   person), the image's own alpha channel, or :func:`matte_by_border_colour` (a simple fallback
   for plain backgrounds: pixels whose colour is far from the median border colour, largest
   connected component, holes filled);
2. framing as PSHuman's input preprocessing (``single_image_dataset.py``): crop to the mask's box,
   resize so its longer side is 740/768 of the side, centre on a white square;
3. multi-view generation (:class:`drpose.pipelines.MultiViewPipeline`, :func:`load_pipeline`):
   ``--pipeline DIR`` (a local folder, ``from_pretrained``; or ``default`` / ``tiny``), else the
   project's default pretrained pipeline when ``python -m drpose.train`` has built it, else the
   random-init tiny pipeline with a warning (shapes only); optionally with ``--lora DIR`` (a
   training checkpoint's ``trainable.safetensors``);
4. reconstruction (:mod:`drpose.recon`): as PSHuman, the front colour view is replaced by the
   input image; the input mask is the front view's mask and, mirrored as the network outputs the
   back view, the back view's (an orthographic back silhouette is the front one mirrored);
5. outputs in DIR: ``views.png`` (normal and colour rows), ``mesh.obj`` and ``mesh.glb`` (vertex
   colours, box units: the rig's normalised coordinates, ~0.96 units tall) and ``turntable.png``
   (8 azimuths, shaded).
"""

from __future__ import annotations

from drpose._cli import UsageError, apply_openmp_wait_policy, command

if __name__ == "__main__":  # decided before torch loads OpenMP
    apply_openmp_wait_policy()

import argparse
import contextlib
import sys
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import smplx
import torch
import torch.nn.functional as F
from PIL import Image
from scipy import ndimage

from drpose._devices import resolve_device
from drpose._progress import progress
from drpose.body import load_smplx
from drpose.pipelines import MultiViewPipeline
from drpose.pipelines.default import default_pipeline_dir
from drpose.pipelines.multiview import MultiViewOutput, save_grid
from drpose.recon import (
    CarveConfig,
    FitConfig,
    ReconConfig,
    ReconResult,
    prepare_views,
    reconstruct,
    turntable,
)
from drpose.recon.views import masks_from_normal_maps
from drpose.render import cameras
from drpose.render.conditions import save_view_grid

BORDER_COLOUR_DISTANCE = 0.15  # RGB distance in [0, 1]^3 from the border colour: foreground
TURNTABLE_SIZE = 256


def matte_by_border_colour(image: np.ndarray, threshold: float = BORDER_COLOUR_DISTANCE
                           ) -> np.ndarray:
    """(H, W) bool person mask of an (H, W, 3) float image in [0, 1] on a plain background.

    The background colour is the median of the image's border pixels; pixels farther than
    ``threshold`` from it are foreground; the largest connected foreground component is kept and
    its holes are filled. Fails on cluttered backgrounds: give ``--mask`` there.
    """
    border = np.concatenate([image[0], image[-1], image[:, 0], image[:, -1]])
    background = np.median(border, axis=0)
    foreground = np.linalg.norm(image - background, axis=-1) > threshold
    labels, count = ndimage.label(foreground)
    if count == 0:
        raise ValueError("matting found no foreground (the image is one plain colour); pass "
                         "--mask")
    sizes = ndimage.sum(foreground, labels, index=np.arange(1, count + 1))
    return ndimage.binary_fill_holes(labels == 1 + int(np.argmax(sizes)))


def person_mask(image: Image.Image, mask_path: str | Path | None) -> np.ndarray:
    """(H, W) bool mask: the mask file (> 50% grey), else a non-trivial alpha channel, else
    :func:`matte_by_border_colour`."""
    if mask_path is not None:
        mask = Image.open(mask_path).convert("L")
        if mask.size != image.size:
            raise ValueError(f"--mask size {mask.size} differs from the image's {image.size}")
        return np.asarray(mask) > 127
    if image.mode in ("RGBA", "LA"):
        alpha = np.asarray(image.getchannel("A")) > 127
        if 0 < alpha.sum() < alpha.size:
            return alpha
    return matte_by_border_colour(np.asarray(image.convert("RGB"), dtype=np.float32) / 255)


def frame_person(image: np.ndarray, mask: np.ndarray, size: int,
                 fraction: float = cameras.INFERENCE_CROP_FRACTION) -> tuple[np.ndarray,
                                                                              np.ndarray]:
    """PSHuman's input framing: crop (H, W, 3) float image and (H, W) bool mask to the mask's
    box, scale its longer side to ``fraction * size``, centre on a white ``size`` square.
    Returns the (size, size, 3) image (person composited on white) and (size, size) mask."""
    rows, cols = np.nonzero(mask)
    if rows.size == 0:
        raise ValueError("the person mask is empty")
    top, bottom, left, right = rows.min(), rows.max() + 1, cols.min(), cols.max() + 1
    rgba = np.concatenate([image, mask[..., None].astype(np.float32)], axis=-1)[top:bottom,
                                                                                left:right]
    h, w = rgba.shape[:2]
    scale = fraction * size / max(h, w)
    new_h, new_w = max(1, round(h * scale)), max(1, round(w * scale))
    resized = F.interpolate(torch.from_numpy(rgba).permute(2, 0, 1)[None], size=(new_h, new_w),
                            mode="bilinear", align_corners=False, antialias=True)[0]
    canvas = torch.zeros(4, size, size)
    y0, x0 = (size - new_h) // 2, (size - new_w) // 2
    canvas[:, y0:y0 + new_h, x0:x0 + new_w] = resized.clamp(0, 1)
    alpha = canvas[3:]
    composited = canvas[:3] * alpha + (1 - alpha)
    return composited.permute(1, 2, 0).numpy(), (alpha[0] > 0.5).numpy()


def load_lora(pipe: MultiViewPipeline, folder: str | Path) -> None:
    """Add the LoRA adapters of a training checkpoint (``trainable.safetensors``: the adapted
    UNet's parameter names -> tensors) to ``pipe.unet``. Rank from the ``lora_A`` shapes, alpha =
    rank (as :mod:`drpose.train` trains them), target modules from the names."""
    from peft import LoraConfig
    from safetensors.torch import load_file

    path = Path(folder) / "trainable.safetensors"
    if not path.is_file():
        raise FileNotFoundError(f"--lora: {path} not found (expected a drpose training "
                                "checkpoint folder, checkpoints/step_NNNNNNN)")
    weights = load_file(path)
    downs = {k: v for k, v in weights.items() if ".lora_A." in k}
    if not downs:
        raise ValueError(f"--lora: {path} holds no lora_A tensors")
    rank = next(iter(downs.values())).shape[0]
    targets = sorted({_module_suffix(k.split(".lora_A.")[0]) for k in downs})
    pipe.unet.add_adapter(LoraConfig(r=rank, lora_alpha=rank, target_modules=targets))
    params = dict(pipe.unet.named_parameters())
    unknown = sorted(set(weights) - set(params))
    if unknown:
        raise ValueError(f"--lora: tensors not in the UNet: {unknown[:5]}")
    with torch.no_grad():
        for name, value in weights.items():
            params[name].copy_(value)


def _module_suffix(name: str) -> str:
    """peft target name of a module path: its last part, or last two when that is an index
    (``...attn1.to_q`` -> ``to_q``, ``...attn1.to_out.0`` -> ``to_out.0``)."""
    parts = name.split(".")
    return ".".join(parts[-2:]) if parts[-1].isdigit() else parts[-1]


def load_pipeline(pipeline: str | Path | None, lora_dir: str | Path | None, *,
                  seed: int = 0, device: str | None = None) -> MultiViewPipeline:
    """The multi-view pipeline on ``device`` (:func:`drpose._devices.resolve_device`: None is
    the GPU when there is one; reconstruction itself runs on the CPU). ``pipeline``: a local
    folder; ``"default"``: the project's default pretrained one (FileNotFoundError when
    ``python -m drpose.train`` has not built it); ``"tiny"``:
    random-init tiny components (``seed``); None: the default one when built, else the tiny
    one with a warning. ``lora_dir``: adapters of a training run (:func:`load_lora`)."""
    if pipeline is None:
        pipeline = default_pipeline_dir()
        if pipeline is None:
            warnings.warn("no --pipeline given and no default pipeline built (python -m "
                          "drpose.train builds it): using MultiViewPipeline.tiny(), RANDOM-INIT "
                          "weights; the views and the mesh only exercise the code path",
                          stacklevel=2)
            pipeline = "tiny"
    elif str(pipeline) == "default":
        pipeline = default_pipeline_dir()
        if pipeline is None:
            raise FileNotFoundError("pipeline 'default': the default pipeline is not built yet; "
                                    "`python -m drpose.train` builds it")
    pipe = (MultiViewPipeline.tiny(seed=seed) if str(pipeline) == "tiny"
            else MultiViewPipeline.from_pretrained(pipeline))
    if lora_dir is not None:
        load_lora(pipe, lora_dir)
    return pipe.to(resolve_device(device))


@torch.no_grad()
def generate_views(pipe: MultiViewPipeline, image: np.ndarray, mask: np.ndarray, *,
                   steps: int = 40, guidance: float = 3.0, seed: int = 0
                   ) -> tuple[MultiViewOutput, np.ndarray, np.ndarray]:
    """Frame the person (:func:`frame_person`, at the pipeline's image side) and generate the
    views. image: (H, W, 3) float in [0, 1]; mask: (H, W) bool. Returns the pipeline output
    (one object) and the framed (S, S, 3) image and (S, S) mask."""
    side = pipe.image_side
    framed, framed_mask = frame_person(image, mask, side)
    batch = torch.from_numpy(framed).permute(2, 0, 1)[None].to(pipe.device, pipe.dtype)
    generator = torch.Generator(pipe.device).manual_seed(seed)
    output = pipe(batch, num_inference_steps=steps, guidance_scale=guidance,
                  generator=generator)
    return output, framed, framed_mask


def reconstruct_views(output: MultiViewOutput, framed: np.ndarray, framed_mask: np.ndarray,
                      body: smplx.SMPLX, config: ReconConfig, *,
                      progress: bool = False) -> ReconResult:
    """Carve the generated views of :func:`generate_views` into a mesh, as PSHuman: the front
    colour view is replaced by the input image; the input mask is the front view's mask and,
    mirrored as the network outputs the back view, the back view's (an orthographic back
    silhouette is the front one mirrored); the other views' masks come from their normal maps."""
    normals, colours = output.normals[0].float().cpu(), output.colours[0].float().cpu()
    colours[0] = torch.from_numpy(framed).permute(2, 0, 1)
    masks = masks_from_normal_maps(normals[:6])
    front = torch.from_numpy(framed_mask).float()[None]
    masks[0], masks[3] = front, front.flip(-1)
    views = prepare_views(normals, colours, masks)
    return reconstruct(views, body, config, progress=progress)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m drpose.infer",
        description="one photo of a person -> six generated views -> carved, coloured mesh",
        formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("image", type=Path, help="photo of one person (RGB or RGBA)")
    parser.add_argument("--out", type=Path, required=True, help="output folder")
    parser.add_argument("--mask", type=Path, help="person mask image (white = person)")
    parser.add_argument("--pipeline", type=Path, help="local MultiViewPipeline folder, "
                        "'default' or 'tiny' (default: the default pipeline when built)")
    parser.add_argument("--lora", type=Path, help="training checkpoint folder with LoRA weights")
    parser.add_argument("--smplx-dir", type=Path, help="SMPL-X model folder (default: "
                        "$DRPOSE_SMPLX_DIR or the stand-in)")
    parser.add_argument("--steps", type=int, default=40, help="DDIM steps (PSHuman: 40)")
    parser.add_argument("--guidance", type=float, default=3.0, help="CFG scale (PSHuman: 3)")
    parser.add_argument("--seed", type=int, default=0)
    defaults = ReconConfig()
    parser.add_argument("--resolution", type=int, default=defaults.resolution,
                        help="reconstruction view resolution")
    parser.add_argument("--fit-iters", type=int, default=defaults.fit.iterations)
    parser.add_argument("--carve-iters", type=int, default=defaults.carve.iterations)
    parser.add_argument("--poisson-depth", type=int, default=defaults.poisson_depth)
    parser.add_argument("--device", help="where the views are generated: cpu, cuda, cuda:1, "
                        "... (default: CUDA when there is a GPU)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")
    return parser.parse_args(argv)


@contextlib.contextmanager
def timed(seconds: dict[str, float], name: str) -> Iterator[None]:
    """Record the wall time of the block under ``name``."""
    start = time.perf_counter()
    yield
    seconds[name] = time.perf_counter() - start


def read_photo(path: Path) -> Image.Image:
    """The input photo, fully decoded; UsageError naming ``path`` when it is missing, not a file
    or not an image PIL can read (truncated or corrupt files included)."""
    if not path.is_file():
        raise UsageError(f"{path}: no such image file{' (a folder)' if path.is_dir() else ''}; "
                         "pass the path of a photo (PNG, JPEG, ...)")
    try:
        photo = Image.open(path)
        photo.load()
    except (OSError, SyntaxError, ValueError) as error:
        raise UsageError(f"{path}: not a readable image ({error}); pass a PNG or JPEG "
                         "photo") from error
    return photo


@command
def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    infer_image(parse_args(argv))
    return 0


def infer_image(args: argparse.Namespace) -> dict[str, float]:
    """Photo -> views, mesh and turntable in ``args.out`` (:func:`parse_args`); returns the
    seconds per stage. The inputs are checked before ``args.out`` is created."""
    photo = read_photo(args.image)
    if args.mask is not None:
        read_photo(args.mask)
    args.out.mkdir(parents=True, exist_ok=True)
    seconds: dict[str, float] = {}
    stages = progress(total=4, desc="drpose.infer", enabled=not args.no_progress)

    with timed(seconds, "matting"):
        mask = person_mask(photo, args.mask)
        rgb = np.asarray(photo.convert("RGB"), dtype=np.float32) / 255
    stages.update()

    with timed(seconds, "generation"):
        pipe = load_pipeline(args.pipeline, args.lora, device=args.device)
        output, framed, framed_mask = generate_views(pipe, rgb, mask, steps=args.steps,
                                                     guidance=args.guidance, seed=args.seed)
        save_grid(output, args.out / "views.png")
    stages.update()

    with timed(seconds, "reconstruction"):
        config = ReconConfig(resolution=args.resolution,
                             fit=FitConfig(iterations=args.fit_iters),
                             carve=CarveConfig(iterations=args.carve_iters),
                             poisson_depth=args.poisson_depth)
        result = reconstruct_views(output, framed, framed_mask, load_smplx(args.smplx_dir),
                                   config, progress=not args.no_progress)
    stages.update()

    with timed(seconds, "export"):
        result.mesh.export(args.out / "mesh.obj")
        result.mesh.export(args.out / "mesh.glb")
        vertex_colours = torch.from_numpy(result.mesh.visual.vertex_colors[:, :3] / 255).float()
        frames = turntable(torch.from_numpy(np.asarray(result.mesh.vertices)).float(),
                           torch.from_numpy(np.asarray(result.mesh.faces)), vertex_colours,
                           TURNTABLE_SIZE)
        save_view_grid(frames, args.out / "turntable.png")
    stages.update()
    stages.close()

    print(f"wrote {args.out}: views.png, mesh.obj, mesh.glb, turntable.png")
    for name, value in seconds.items():
        print(f"  {name:15s} {value:7.1f} s")
    for name, value in result.seconds.items():
        print(f"    recon {name:9s} {value:7.1f} s")
    return seconds


if __name__ == "__main__":
    sys.exit(main())
