"""DrPose15K on disk: the format, a torch Dataset that reads it, validation, a contact sheet.

Format (``FORMAT_NAME`` = "drpose15k", :data:`FORMAT_VERSION` = 1)::

    DIR/
      format.json       what was built and how (written once; a resumed or parallel build
                        must agree with it): format, format_version, resolution, synth (backend
                        name and settings, including body_model: "standin:<version>" or the
                        SMPL-X folder), anchors, neighbours, stride, window (frames per window =
                        neighbours + 1), windows_per_shard, num_windows, num_shards,
                        num_samples, clips (source of each clip), seed, portraits (paths),
                        image ("png-rgba8"), camera ({"view": "front", "normalization":
                        "inference"})
      plan.npz          the selection: windows (num_windows, window) int64 rows of the
                        concatenated clips, anchors (num_windows,) int64 rows
      manifest.json     {"format_version", "completed": {"00003": {"samples": n,
                        "index_sha256": ...}, ...}}: the finished shards
      contact_sheet.png samples with their COCO-17 skeletons drawn over (once complete)
      shards/
        shard-00000/    one finished shard (written as shards/.tmp-shard-00000-<host>-<pid>/,
                        then renamed: a shard folder is complete or absent)
          00000000.png  sample 0: RGBA 8-bit, R x R; RGB = the image on white, A = body mask
          ...
          index.npz     the shard's samples, in sample order (n rows)
          shard.json    {"shard", "samples", "files": {name: {"bytes", "sha256"}}}

Samples: window w (an FPS anchor with its temporal neighbours, :mod:`drpose.motion.select`)
holds samples ``w * window + j`` for j = 0 .. window - 1 (frame order); shard s holds windows
``s * windows_per_shard`` up to the next shard's first window. Arrays of ``index.npz``
(float32 unless noted):

========================  ===========  =====================================================
sample, window, position  (n,) int64   global sample id, window id, frame index in window
anchor                    (n,) bool    the window's FPS anchor
clip, frame               (n,) int64   clip index into format.json "clips"; frame id in it
global_orient, transl     (n, 3)       SMPL-X root (axis-angle rad) and translation (m), y up
body_pose                 (n, 63)      SMPL-X body joints 1-21, axis-angle rad
betas                     (n, S)       SMPL-X shape
left/right_hand_pose      (n, 45)      only when every source clip has hands
jaw_pose                  (n, 3)       only when every source clip has it
joints                    (n, 55, 3)   posed SMPL-X skeleton joints, world metres
keypoints                 (n, 17, 2)   COCO-17 in image pixels (centres at integers, y down)
keypoints_visible         (n, 17) bool inside the image
camera_center             (n, 3)       body normalisation of the front camera (PSHuman's rig,
camera_scale              (n,)         :mod:`drpose.render.cameras`): p = (x - c) * s
seed                      (n,) int64   the synthesizer's seed of the sample's window
portrait                  (n,) int64   index into format.json "portraits", -1 for none
palette                   (n, 5, 3)    render backend only: RGB of skin, hair, top, bottom, shoes
========================  ===========  =====================================================
"""

from __future__ import annotations

import hashlib
import json
import math
import zipfile
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from drpose.render.draw import draw_skeleton

FORMAT_NAME = "drpose15k"
FORMAT_VERSION = 1
FORMAT_FILE, PLAN_FILE, MANIFEST_FILE = "format.json", "plan.npz", "manifest.json"
SHARDS_DIR, INDEX_FILE, SHARD_FILE = "shards", "index.npz", "shard.json"
TMP_PREFIX = ".tmp-"
REQUIRED_ARRAYS: dict[str, tuple[int, ...]] = {
    "sample": (), "window": (), "position": (), "anchor": (), "clip": (), "frame": (),
    "global_orient": (3,), "transl": (3,), "body_pose": (63,), "joints": (55, 3),
    "keypoints": (17, 2), "keypoints_visible": (17,), "camera_center": (3,), "camera_scale": (),
    "seed": (), "portrait": (),
}  # fmt: skip
POSE_ARRAYS = ("global_orient", "transl", "body_pose", "betas", "left_hand_pose",
               "right_hand_pose", "jaw_pose", "joints", "keypoints", "camera_center",
               "camera_scale")
SMPLX_ARRAYS = ("global_orient", "body_pose", "transl", "betas", "left_hand_pose",
                "right_hand_pose", "jaw_pose")


def shard_name(shard: int) -> str:
    """Folder name of shard ``shard`` inside ``shards/``."""
    return f"shard-{shard:05d}"


def image_name(sample: int) -> str:
    """File name of sample ``sample``'s image inside its shard folder."""
    return f"{sample:08d}.png"


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes."""
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_json(path: Path) -> dict[str, Any]:
    """A JSON object from ``path``."""
    return json.loads(path.read_text())


def read_index(path: Path) -> dict[str, np.ndarray]:
    """All arrays of an ``index.npz``; ValueError naming ``path`` when it is damaged (truncated
    or altered: not a readable zip of arrays)."""
    try:
        with np.load(path, allow_pickle=False) as data:
            return {name: data[name] for name in data.files}
    except (zipfile.BadZipFile, zlib.error, EOFError, KeyError, ValueError) as error:
        raise ValueError(f"{path}: damaged ({type(error).__name__}: {error}); rebuild this shard "
                         "(delete its folder and run `python -m drpose.data build` "
                         "again)") from error


def read_format(root: Path) -> dict[str, Any]:
    """``format.json`` of a dataset, checked to be this format and version."""
    path = root / FORMAT_FILE
    if not path.is_file():
        raise FileNotFoundError(f"{path} missing: {root} is not a DrPose15K dataset")
    spec = read_json(path)
    if spec.get("format") != FORMAT_NAME:
        raise ValueError(f"{path}: format is {spec.get('format')!r}, expected {FORMAT_NAME!r}")
    if spec.get("format_version") != FORMAT_VERSION:
        raise ValueError(f"{path}: format_version {spec.get('format_version')!r}; this drpose "
                         f"reads version {FORMAT_VERSION} (rebuild the dataset)")
    return spec


def completed_shards(root: Path) -> list[int]:
    """Shard ids whose folders exist (renamed into place, hence complete), ascending."""
    folder = root / SHARDS_DIR
    if not folder.is_dir():
        return []
    return sorted(int(p.name.split("-")[1]) for p in folder.glob("shard-*") if p.is_dir())


def read_rgba(path: Path) -> Tensor:
    """A dataset PNG as ``(4, R, R)`` uint8 (RGB, then the mask as alpha); a missing or
    unreadable file raises naming it."""
    try:
        with Image.open(path) as im:
            pixels = np.array(im.convert("RGBA"))  # a writable copy
    except (OSError, SyntaxError) as error:
        raise ValueError(f"{path}: cannot read the image ({error}); rebuild its shard (delete "
                         "the shard folder and run `python -m drpose.data build` again)"
                         ) from error
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def load_image(path: Path) -> tuple[Tensor, Tensor]:
    """(image (3, R, R), mask (1, R, R)) float32 in [0, 1] from a dataset PNG (RGBA)."""
    tensor = read_rgba(path).float() / 255.0
    return tensor[:3].contiguous(), tensor[3:].contiguous()


class DrPoseDataset(torch.utils.data.Dataset):
    """A DrPose15K dataset on disk (module docstring), one item per sample, in sample order.

    Args:
        root: the dataset folder.
        allow_incomplete: read the finished shards of a dataset still being built; otherwise a
            missing shard raises naming it.

    Items are dicts: ``image`` (3, R, R) float32 in [0, 1], ``mask`` (1, R, R) float32,
    ``smplx`` dict of float32 tensors (global_orient (3,), body_pose (63,), transl (3,), betas
    (S,), and hand / jaw poses when stored), ``joints`` (55, 3), ``keypoints`` (17, 2),
    ``keypoints_visible`` (17,) bool, ``camera`` dict (center (3,), scale ()), ``meta`` dict
    (sample, window, position, frame: int; anchor: bool; clip: source name; shard: int), and for
    render-backend datasets ``palette`` (5, 3).
    """

    def __init__(self, root: str | Path, *, allow_incomplete: bool = False) -> None:
        self.root = Path(root)
        self.spec = read_format(self.root)
        shards = completed_shards(self.root)
        missing = sorted(set(range(self.spec["num_shards"])) - set(shards))
        if missing and not allow_incomplete:
            raise ValueError(f"{self.root}: shards {[shard_name(s) for s in missing]} are not "
                             "built yet (resume the build, or pass allow_incomplete=True)")
        indices = [read_index(self.root / SHARDS_DIR / shard_name(s) / INDEX_FILE)
                   for s in shards]
        self.index = {name: np.concatenate([i[name] for i in indices])
                      for name in (indices[0] if indices else {})}
        self.shard_of = np.concatenate(
            [np.full(len(i["sample"]), s, dtype=np.int64) for s, i in zip(shards, indices,
                                                                         strict=True)]
        ) if indices else np.zeros(0, dtype=np.int64)

    def __len__(self) -> int:
        return len(self.shard_of)

    def __getitem__(self, item: int) -> dict[str, Any]:
        if not -len(self) <= item < len(self):
            raise IndexError(f"sample {item} out of range for {len(self)} samples")
        item = item % len(self)
        row = {name: torch.from_numpy(np.asarray(values[item])) for name, values in
               self.index.items()}
        sample = int(row["sample"])
        shard = int(self.shard_of[item])
        image, mask = load_image(self.root / SHARDS_DIR / shard_name(shard) / image_name(sample))
        extra = {"palette": row["palette"]} if "palette" in row else {}
        return {
            **extra,
            "image": image,
            "mask": mask,
            "smplx": {name: row[name] for name in SMPLX_ARRAYS if name in row},
            "joints": row["joints"],
            "keypoints": row["keypoints"],
            "keypoints_visible": row["keypoints_visible"],
            "camera": {"center": row["camera_center"], "scale": row["camera_scale"]},
            "meta": {"sample": sample, "window": int(row["window"]),
                     "position": int(row["position"]), "anchor": bool(row["anchor"]),
                     "clip": self.spec["clips"][int(row["clip"])], "frame": int(row["frame"]),
                     "shard": shard},
        }


@dataclass
class ValidationReport:
    """What :func:`validate` found: ``problems`` (each names the file), ``notes`` (harmless)."""

    problems: list[str]
    notes: list[str]
    samples: int = 0
    shards: int = 0

    @property
    def ok(self) -> bool:
        return not self.problems


def validate(root: str | Path, *, check_hashes: bool = True) -> ValidationReport:
    """Check a dataset: format and version, plan, every shard present and listed in the manifest,
    file sizes and hashes against ``shard.json``, every image decodable RGBA R x R, index arrays
    present with the right shapes, poses finite, samples where the plan puts them."""
    root = Path(root)
    report = ValidationReport(problems=[], notes=[])
    problem = report.problems.append
    try:
        spec = read_format(root)
    except (OSError, ValueError) as error:
        problem(str(error))
        return report
    try:
        with np.load(root / PLAN_FILE, allow_pickle=False) as plan:
            windows = plan["windows"]
    except (OSError, KeyError, ValueError) as error:
        problem(f"{root / PLAN_FILE}: unreadable plan ({error})")
        return report
    if windows.shape != (spec["num_windows"], spec["window"]):
        problem(f"{root / PLAN_FILE}: windows shape {windows.shape}, format.json says "
                f"({spec['num_windows']}, {spec['window']})")
    try:
        manifest = read_json(root / MANIFEST_FILE)
        listed = {int(k): v for k, v in manifest.get("completed", {}).items()}
    except (OSError, ValueError) as error:
        problem(f"{root / MANIFEST_FILE}: unreadable manifest ({error})")
        listed = {}
    present = completed_shards(root)
    missing = sorted(set(range(spec["num_shards"])) - set(present))
    if missing:
        problem(f"{len(missing)} of {spec['num_shards']} shards missing: "
                f"{', '.join(shard_name(s) for s in missing[:10])}"
                f"{' ...' if len(missing) > 10 else ''} (resume the build)")
    for s in sorted(set(present) - set(range(spec["num_shards"]))):
        problem(f"{root / SHARDS_DIR / shard_name(s)}: shard id beyond num_shards "
                f"{spec['num_shards']}")
    for s in sorted(set(present) - set(listed)):
        report.notes.append(f"{shard_name(s)} is complete but not in {MANIFEST_FILE} (the build "
                            "stopped between the two; the next build run adds it)")
    for s in sorted(set(listed) - set(present)):
        problem(f"{MANIFEST_FILE} lists {shard_name(s)} but {root / SHARDS_DIR / shard_name(s)} "
                "does not exist")
    for tmp in sorted((root / SHARDS_DIR).glob(TMP_PREFIX + "*")):
        report.notes.append(f"{tmp}: unfinished shard of an interrupted or running build "
                            "(ignored; removed when that shard is built)")
    for s in present:
        if s < spec["num_shards"]:
            report.samples += _validate_shard(root, s, spec, windows, listed.get(s),
                                              check_hashes, problem)
            report.shards += 1
    return report


def _validate_shard(root: Path, shard: int, spec: dict[str, Any], windows: np.ndarray,
                    listed: dict[str, Any] | None, check_hashes: bool, problem) -> int:
    folder = root / SHARDS_DIR / shard_name(shard)
    try:
        record = read_json(folder / SHARD_FILE)
    except (OSError, ValueError) as error:
        problem(f"{folder / SHARD_FILE}: unreadable ({error})")
        return 0
    files = record.get("files", {})
    for name in sorted(set(p.name for p in folder.iterdir()) - set(files) - {SHARD_FILE}):
        problem(f"{folder / name}: file not listed in {SHARD_FILE}")
    for name, expected in files.items():
        path = folder / name
        if not path.is_file():
            problem(f"{path}: missing")
        elif path.stat().st_size != expected["bytes"]:
            problem(f"{path}: {path.stat().st_size} bytes, {SHARD_FILE} says {expected['bytes']}")
        elif check_hashes and file_sha256(path) != expected["sha256"]:
            problem(f"{path}: content differs from its SHA-256 in {SHARD_FILE} (corrupted)")
    if listed is not None and files.get(INDEX_FILE, {}).get("sha256") != listed["index_sha256"]:
        problem(f"{folder / INDEX_FILE}: hash differs from {MANIFEST_FILE}")
    try:
        index = read_index(folder / INDEX_FILE)
    except OSError as error:
        problem(f"{folder / INDEX_FILE}: unreadable ({error})")
        return 0
    except ValueError as error:
        problem(str(error))
        return 0
    first = shard * spec["windows_per_shard"]
    shard_windows = windows[first:first + spec["windows_per_shard"]]
    expected_samples = (np.arange(first, first + len(shard_windows))[:, None] * spec["window"]
                        + np.arange(spec["window"])[None]).reshape(-1)
    count = len(expected_samples)
    if record.get("samples") != count:
        problem(f"{folder / SHARD_FILE}: {record.get('samples')} samples, the plan says {count}")
    for name, tail in REQUIRED_ARRAYS.items():
        if name not in index:
            problem(f"{folder / INDEX_FILE}: array {name!r} missing")
        elif index[name].shape != (count, *tail):
            problem(f"{folder / INDEX_FILE}: {name} has shape {index[name].shape}, expected "
                    f"{(count, *tail)}")
    for name in POSE_ARRAYS:
        if name in index and not np.isfinite(index[name]).all():
            bad = np.unique(np.nonzero(~np.isfinite(index[name]))[0])
            problem(f"{folder / INDEX_FILE}: {name} not finite in rows {bad[:10].tolist()}")
    if "sample" in index and not np.array_equal(index["sample"], expected_samples):
        problem(f"{folder / INDEX_FILE}: sample ids differ from the plan's for this shard")
    if "clip" in index and len(index["clip"]) and (
            index["clip"].min() < 0 or index["clip"].max() >= len(spec["clips"])):
        problem(f"{folder / INDEX_FILE}: clip ids outside format.json's {len(spec['clips'])}")
    side = spec["resolution"]
    for sample in expected_samples:
        path = folder / image_name(int(sample))
        if not path.is_file():
            problem(f"{path}: missing")
            continue
        try:
            with Image.open(path) as im:
                im.load()
                if im.size != (side, side) or im.mode != "RGBA":
                    problem(f"{path}: {im.mode} {im.size[0]}x{im.size[1]}, expected RGBA "
                            f"{side}x{side}")
        except OSError as error:
            problem(f"{path}: not a decodable image ({error})")
    return count


def write_contact_sheet(root: str | Path, path: str | Path | None = None, *, count: int = 16,
                        tile: int = 192) -> Path:
    """A PNG grid of ``count`` samples spread evenly over the dataset, each with its COCO-17
    skeleton drawn over (OpenPose colours); default path ``DIR/contact_sheet.png``."""
    dataset = DrPoseDataset(root, allow_incomplete=True)
    if len(dataset) == 0:
        raise ValueError(f"{root}: no finished shards to show")
    picks = np.unique(np.linspace(0, len(dataset) - 1, min(count, len(dataset))).round())
    columns = math.ceil(math.sqrt(len(picks)))
    rows = math.ceil(len(picks) / columns)
    sheet = Image.new("RGB", (columns * tile, rows * tile), "white")
    for k, item in enumerate(picks):
        sample = dataset[int(item)]
        pixels = (sample["image"].permute(1, 2, 0).numpy() * 255 + 0.5).astype(np.uint8)
        canvas = Image.fromarray(pixels)
        draw_skeleton(canvas, sample["keypoints"].numpy(), sample["keypoints_visible"].numpy())
        sheet.paste(canvas.resize((tile, tile), Image.Resampling.LANCZOS),
                    ((k % columns) * tile, (k // columns) * tile))
    path = Path(path) if path is not None else Path(root) / "contact_sheet.png"
    sheet.save(path)
    return path
