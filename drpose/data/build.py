"""Building DrPose15K: motion clips -> pose selection -> synthesised images -> shards on disk.

The format is specified in :mod:`drpose.data.dataset`. The build

1. loads the clips (:func:`load_motions`), concatenates them and selects ``anchors`` poses by
   farthest point sampling, each with ``neighbours`` temporal neighbours
   (:func:`drpose.motion.select.select_poses`): one window per anchor;
2. writes ``format.json`` and ``plan.npz`` once; a later run (a resumed build, or another
   ``--shard i/n`` process) must compute the same settings and plan or it stops with an error
   naming what differs;
3. builds every shard of its partition that is not finished: the shard is written into a
   temporary folder (files flushed to disk), then renamed into place, so a shard folder is
   either complete or absent; a finished shard is never rewritten. The manifest is then updated
   under a file lock. An interrupted build leaves at most a temporary folder, which the next
   run for that shard removes;
4. writes ``contact_sheet.png`` when every shard is present (again only if this run built
   one).

Shards are independent: ``shard=(i, n)`` builds the shards ``s`` with ``s % n == i``, so n
processes or machines sharing the output folder build the dataset together. Every file is
byte-for-byte deterministic (PNG, index arrays with fixed zip timestamps), so a resumed or split
build equals an uninterrupted one.
"""

from __future__ import annotations

import fcntl
import hashlib
import io
import json
import os
import shutil
import socket
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from tqdm.auto import tqdm

from drpose._progress import progress as progress_bar
from drpose.data import dataset as fmt
from drpose.data.synth import Synthesizer, SynthFrames
from drpose.motion.load import default_pose_sequences, load_motion
from drpose.motion.select import Selection, pose_features, select_poses
from drpose.motion.sequence import PoseSequence, concatenate

DEFAULT_MOTION = "default"


@dataclass(frozen=True)
class BuildConfig:
    """What to build.

    motions: motion files (.bvh, .npz AMASS or saved PoseSequence, .npy Motion-X) or
        ``"default"`` for the packaged sample. out: dataset folder. anchors: FPS anchors N.
    neighbours: temporal neighbours k per anchor (windows of k + 1 frames). stride: frames
        between window frames. windows_per_shard: windows in one shard. seed: base seed of the
        synthesizer (window w uses :func:`window_seed`). portraits: reference portrait images;
        window w uses ``portraits[w % len(portraits)]`` (none: the backend runs without).
    """

    motions: tuple[str, ...]
    out: Path
    anchors: int
    neighbours: int
    stride: int = 1
    windows_per_shard: int = 8
    seed: int = 0
    portraits: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.motions:
            raise ValueError("motions: give at least one motion file or 'default'")
        for name in ("anchors", "windows_per_shard", "stride"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.neighbours < 0:
            raise ValueError(f"neighbours must be >= 0, got {self.neighbours}")


@dataclass
class BuildResult:
    """Shards this run built, shards it found finished, and whether the dataset is complete."""

    built: list[int] = field(default_factory=list)
    skipped: list[int] = field(default_factory=list)
    complete: bool = False


def parse_shard(text: str) -> tuple[int, int]:
    """``"i/n"`` -> (i, n), 0 <= i < n: this process builds shards ``s % n == i``."""
    try:
        index, count = (int(part) for part in text.split("/"))
    except ValueError:
        raise ValueError(f"--shard expects i/n (e.g. 0/4), got {text!r}") from None
    if not 0 <= index < count:
        raise ValueError(f"--shard i/n needs 0 <= i < n, got {text!r}")
    return index, count


def load_motions(paths: Sequence[str]) -> list[PoseSequence]:
    """Clips of every path, in order; ``"default"`` expands to the packaged sample's clips."""
    clips: list[PoseSequence] = []
    for path in paths:
        clips.extend(default_pose_sequences() if path == DEFAULT_MOTION else
                     [load_motion(path)])
    return clips


def window_seed(seed: int, window: int) -> int:
    """The synthesizer seed of window ``window`` (independent streams per (seed, window))."""
    return int(np.random.SeedSequence([seed, window]).generate_state(1)[0])


def write_npz(path: Path, arrays: dict[str, np.ndarray]) -> None:
    """An uncompressed ``.npz`` readable by ``np.load``, byte-for-byte deterministic (fixed zip
    timestamps, sorted names), flushed to disk."""
    with open(path, "wb") as handle:
        with zipfile.ZipFile(handle, "w", zipfile.ZIP_STORED) as archive:
            for name in sorted(arrays):
                info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
                with archive.open(info, "w", force_zip64=True) as member:
                    np.lib.format.write_array(member, np.asanyarray(arrays[name]),
                                              allow_pickle=False)
        handle.flush()
        os.fsync(handle.fileno())


def write_bytes(path: Path, data: bytes) -> dict[str, Any]:
    """Write ``data`` to ``path``, flushed to disk; returns {"bytes", "sha256"}."""
    with open(path, "wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return {"bytes": len(data), "sha256": hashlib.sha256(data).hexdigest()}


def _replace_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(f"{fmt.TMP_PREFIX}{path.name}-{socket.gethostname()}-{os.getpid()}")
    write_bytes(tmp, data)
    os.replace(tmp, path)


def _json_bytes(value: dict[str, Any]) -> bytes:
    return (json.dumps(value, indent=2, sort_keys=True) + "\n").encode()


def encode_png(image: torch.Tensor, mask: torch.Tensor) -> bytes:
    """RGBA PNG bytes of an image (3, R, R) and mask (1, R, R) in [0, 1] (8 bits, rounded)."""
    rgba = torch.cat([image, mask]).clamp(0, 1).permute(1, 2, 0).numpy()
    buffer = io.BytesIO()
    Image.fromarray((rgba * 255 + 0.5).astype(np.uint8), mode="RGBA").save(buffer, format="PNG")
    return buffer.getvalue()


class DatasetBuilder:
    """Plans a build and writes its shards (module docstring).

    Args:
        config: what to build. synthesizer: the image backend (its :meth:`describe` goes to
            format.json). clips: the loaded clips of ``config.motions`` (default: loaded here).
    """

    def __init__(self, config: BuildConfig, synthesizer: Synthesizer,
                 clips: list[PoseSequence] | None = None) -> None:
        self.config = config
        self.synth = synthesizer
        self.root = Path(config.out)
        clips = clips if clips is not None else load_motions(config.motions)
        self.poses, self.clip_ids = concatenate(clips)
        self.clip_names = [clip.source for clip in clips]
        features = pose_features(self.poses)
        self.selection: Selection = select_poses(
            features, self.clip_ids, anchors=config.anchors, neighbours=config.neighbours,
            stride=config.stride)
        self.window = config.neighbours + 1
        self.num_windows = len(self.selection.anchors)
        self.num_shards = -(-self.num_windows // config.windows_per_shard)
        self.portraits = [_load_portrait(path) for path in config.portraits]

    def spec(self) -> dict[str, Any]:
        """The content of format.json."""
        c = self.config
        return {
            "format": fmt.FORMAT_NAME, "format_version": fmt.FORMAT_VERSION,
            "resolution": self.synth.resolution, "synth": self.synth.describe(),
            "anchors": c.anchors, "neighbours": c.neighbours, "stride": c.stride,
            "window": self.window, "windows_per_shard": c.windows_per_shard,
            "num_windows": self.num_windows, "num_shards": self.num_shards,
            "num_samples": self.num_windows * self.window, "clips": self.clip_names,
            "seed": c.seed, "portraits": [str(Path(p).resolve()) for p in c.portraits],
            "image": "png-rgba8", "camera": {"view": "front", "normalization": "inference"},
        }  # fmt: skip

    def plan_arrays(self) -> dict[str, np.ndarray]:
        """The content of plan.npz."""
        return {"windows": self.selection.windows, "anchors": self.selection.anchors}

    def prepare(self) -> None:
        """Write format.json and plan.npz, or check that the existing ones agree."""
        (self.root / fmt.SHARDS_DIR).mkdir(parents=True, exist_ok=True)
        spec, plan = self.spec(), self.plan_arrays()
        format_path = self.root / fmt.FORMAT_FILE
        if format_path.is_file():
            old = fmt.read_json(format_path)
            differ = sorted(k for k in set(old) | set(spec) if old.get(k) != spec.get(k))
            if differ:
                raise ValueError(
                    f"{self.root} holds a build with other settings ({', '.join(differ)} differ:"
                    f" {[(k, old.get(k), spec.get(k)) for k in differ][:3]}); resume with the "
                    "same arguments or choose a new --out")
        else:
            _replace_atomically(format_path, _json_bytes(spec))
        plan_path = self.root / fmt.PLAN_FILE
        if plan_path.is_file():
            old_plan = fmt.read_index(plan_path)
            if set(old_plan) != set(plan) or any(
                    not np.array_equal(old_plan[k], plan[k]) for k in plan):
                raise ValueError(f"{plan_path}: the pose selection differs from this run's "
                                 "(other motion files?); use the same --motion or a new --out")
        else:
            tmp = plan_path.with_name(f"{fmt.TMP_PREFIX}{plan_path.name}-{os.getpid()}")
            write_npz(tmp, plan)
            os.replace(tmp, plan_path)

    def shard_windows(self, shard: int) -> range:
        """Window ids of a shard."""
        first = shard * self.config.windows_per_shard
        return range(first, min(first + self.config.windows_per_shard, self.num_windows))

    def build(self, shard: tuple[int, int] = (0, 1), *, progress: bool = True) -> BuildResult:
        """Build the unfinished shards of partition ``shard`` = (i, n); returns what it did."""
        index, count = shard
        if not 0 <= index < count:
            raise ValueError(f"shard must be (i, n) with 0 <= i < n, got {shard}")
        self.prepare()
        mine = [s for s in range(self.num_shards) if s % count == index]
        done = set(fmt.completed_shards(self.root))
        self._record_in_manifest(sorted(done & set(range(self.num_shards))))
        result = BuildResult(skipped=[s for s in mine if s in done])
        todo = [s for s in mine if s not in done]
        bar = progress_bar(total=sum(len(self.shard_windows(s)) for s in todo) * self.window,
                           unit="sample", desc=f"build {self.root.name} [{index}/{count}]",
                           enabled=progress)
        with bar:
            for s in todo:
                if self._write_shard(s, bar):
                    result.built.append(s)
                self._record_in_manifest([s])
        present = set(fmt.completed_shards(self.root))
        result.complete = present >= set(range(self.num_shards))
        sheet = self.root / "contact_sheet.png"
        if result.complete and (result.built or not sheet.is_file()):
            fmt.write_contact_sheet(self.root, self.root / f"{fmt.TMP_PREFIX}contact_sheet.png")
            os.replace(self.root / f"{fmt.TMP_PREFIX}contact_sheet.png", sheet)
        return result

    def _write_shard(self, shard: int, bar: tqdm) -> bool:
        """Write one shard through a temporary folder; False if another process finished it."""
        shards = self.root / fmt.SHARDS_DIR
        final = shards / fmt.shard_name(shard)
        for stale in shards.glob(f"{fmt.TMP_PREFIX}{fmt.shard_name(shard)}-*"):
            shutil.rmtree(stale)
        tmp = shards / f"{fmt.TMP_PREFIX}{final.name}-{socket.gethostname()}-{os.getpid()}"
        tmp.mkdir()
        files: dict[str, dict[str, Any]] = {}
        rows: list[dict[str, np.ndarray]] = []
        for window in self.shard_windows(shard):
            seed = window_seed(self.config.seed, window)
            rows.append(self._window_rows(window, seed))
            portrait = (self.portraits[window % len(self.portraits)] if self.portraits
                        else None)
            frames = self.synth(self.poses.take(self.selection.windows[window]), portrait,
                                seed=seed)
            _check_frames(frames, self.window, self.synth.resolution)
            rows[-1].update(_frame_rows(frames))
            for j, sample in enumerate(rows[-1]["sample"]):
                png = encode_png(frames.images[j], frames.masks[j])
                files[fmt.image_name(int(sample))] = write_bytes(tmp / fmt.image_name(int(sample)),
                                                                 png)
                bar.update(1)
        arrays = {name: np.concatenate([r[name] for r in rows]) for name in rows[0]}
        write_npz(tmp / fmt.INDEX_FILE, arrays)
        files[fmt.INDEX_FILE] = {"bytes": (tmp / fmt.INDEX_FILE).stat().st_size,
                                 "sha256": fmt.file_sha256(tmp / fmt.INDEX_FILE)}
        record = {"shard": shard, "samples": len(arrays["sample"]), "files": files}
        write_bytes(tmp / fmt.SHARD_FILE, _json_bytes(record))
        _fsync_dir(tmp)
        try:
            os.rename(tmp, final)
        except OSError:
            if final.is_dir():  # another process finished the same shard first
                shutil.rmtree(tmp)
                return False
            raise
        _fsync_dir(shards)
        return True

    def _window_rows(self, window: int, seed: int) -> dict[str, np.ndarray]:
        rows = self.selection.windows[window]
        poses = self.poses.take(rows)
        out = {
            "sample": window * self.window + np.arange(self.window, dtype=np.int64),
            "window": np.full(self.window, window, dtype=np.int64),
            "position": np.arange(self.window, dtype=np.int64),
            "anchor": rows == self.selection.anchors[window],
            "clip": self.clip_ids[rows].astype(np.int64),
            "frame": poses.frame_ids.astype(np.int64),
            "seed": np.full(self.window, seed, dtype=np.int64),
            "portrait": np.full(self.window, window % len(self.portraits) if self.portraits
                                else -1, dtype=np.int64),
        }
        for name in fmt.SMPLX_ARRAYS:
            value = getattr(poses, name)
            if value is not None:
                out[name] = value.astype(np.float32)
        return out

    def _record_in_manifest(self, shards: list[int]) -> None:
        """Add finished shards to manifest.json (read-modify-replace under a file lock)."""
        path = self.root / fmt.MANIFEST_FILE
        with open(self.root / ".manifest.lock", "a") as lock:  # "a": no mtime change
            fcntl.flock(lock, fcntl.LOCK_EX)
            manifest = (fmt.read_json(path) if path.is_file() else
                        {"format_version": fmt.FORMAT_VERSION, "completed": {}})
            before = dict(manifest["completed"])
            for s in shards:
                folder = self.root / fmt.SHARDS_DIR / fmt.shard_name(s)
                if f"{s:05d}" not in manifest["completed"] and folder.is_dir():
                    record = fmt.read_json(folder / fmt.SHARD_FILE)
                    manifest["completed"][f"{s:05d}"] = {
                        "samples": record["samples"],
                        "index_sha256": record["files"][fmt.INDEX_FILE]["sha256"]}
            if manifest["completed"] != before or not path.is_file():
                _replace_atomically(path, _json_bytes(manifest))


def _frame_rows(frames: SynthFrames) -> dict[str, np.ndarray]:
    body = frames.body
    out = {
        "joints": body.joints.numpy(), "keypoints": body.keypoints.numpy(),
        "keypoints_visible": body.visible.numpy(), "camera_center": body.camera_center.numpy(),
        "camera_scale": body.camera_scale.numpy(),
    }  # fmt: skip
    if frames.palette is not None:
        out["palette"] = frames.palette.numpy()
    return {name: value.astype(np.float32) if value.dtype.kind == "f" else value
            for name, value in out.items()}


def _check_frames(frames: SynthFrames, count: int, side: int) -> None:
    if frames.images.shape != (count, 3, side, side) or frames.masks.shape != (count, 1, side,
                                                                               side):
        raise ValueError(f"synthesizer returned images {tuple(frames.images.shape)} and masks "
                         f"{tuple(frames.masks.shape)}, expected ({count}, 3|1, {side}, {side})")
    if not torch.isfinite(frames.images).all():
        raise ValueError("synthesizer returned non-finite pixels")


def _fsync_dir(path: Path) -> None:
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _load_portrait(path: str) -> torch.Tensor:
    with Image.open(path) as im:
        pixels = np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()
