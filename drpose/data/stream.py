"""(image, joints) pairs of the reward stage, streamed: decoded per item, batched by a DataLoader.

A :class:`PosePairs` is a map-style torch Dataset of ``N`` samples whose item ``i`` is
``(image (3, R, R) uint8, joints (J, 3) float32, i)``: the input image in 8-bit storage (a
quarter of float32's bytes; converted to float in [0, 1] on the run's device by
:meth:`PosePairs.batch` and :class:`StepBatches`) and the PoseScore joints in normalised body
coordinates. Only the joints (J x 3 floats per sample) are held for every sample; images are
read when an item is asked for, so resident memory does not grow with ``N``:

* :class:`TensorPairs` holds its images in memory (the default multi-view renders, tests);
* :class:`DrPose15KPairs` reads one PNG of a DrPose15K folder per item.

A pair's image may be replaced by its condition encodings (``drpose.train.conditions``:
``(latents, embeds)`` tensors instead of the image), which batches carry as they are.

Training draws micro-batch ``k``'s samples from ``step_generator(seed, k, rank)``
(:func:`step_picks`), so a resumed run loads exactly what an uninterrupted one would;
:class:`StepBatches` loads those micro-batches ahead of the step through a
``torch.utils.data.DataLoader`` (worker processes, pinned memory on CUDA).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler, default_collate

from drpose.body.joints import POSESCORE_JOINTS
from drpose.data.dataset import SHARDS_DIR, DrPoseDataset, image_name, read_rgba, shard_name
from drpose.render import cameras

Inputs = Tensor | Sequence[Tensor]  # an image, or condition encodings (module docstring)
Pair = tuple[Inputs, Tensor, int]


class PosePairs(Dataset):
    """``N`` (image, joints) pairs (module docstring); subclasses define :meth:`image`.

    Args:
        joints: ``(N, J, 3)`` float32, normalised body coordinates
            (:meth:`drpose.render.cameras.BodyNormalization.apply`), as PoseScore takes them.
    """

    def __init__(self, joints: Tensor) -> None:
        if joints.dim() != 3 or joints.shape[-1] != 3:
            raise ValueError(f"joints must be (N, J, 3), got {tuple(joints.shape)}")
        self.joints = joints.float()

    def __len__(self) -> int:
        return self.joints.shape[0]

    def image(self, i: int) -> Inputs:
        """Sample ``i``'s input image ``(3, R, R)``, uint8 (or float in [0, 1])."""
        raise NotImplementedError

    def __getitem__(self, i: int) -> Pair:
        if not 0 <= i < len(self):
            raise IndexError(f"sample {i} out of range for {len(self)} pairs")
        return self.image(i), self.joints[i], i

    def batch(self, indices: Tensor, device: torch.device | str = "cpu"
              ) -> tuple[Inputs, Tensor]:
        """(images ``(B, 3, R, R)`` float in [0, 1] (or the encodings, batched), joints
        ``(B, J, 3)``) of ``indices``, on ``device``."""
        inputs = default_collate([self.image(int(i)) for i in indices])
        return inputs_on(inputs, torch.device(device)), self.joints[indices].to(device)


def as_float_images(images: Tensor) -> Tensor:
    """uint8 images as float32 in [0, 1]; float images unchanged."""
    return images.float() / 255 if images.dtype == torch.uint8 else images


def inputs_on(inputs: Inputs, device: torch.device, non_blocking: bool = False) -> Inputs:
    """A batch's inputs on ``device``: images as float in [0, 1], encodings as they are."""
    if isinstance(inputs, Tensor):
        return as_float_images(inputs.to(device, non_blocking=non_blocking))
    return tuple(t.to(device, non_blocking=non_blocking) for t in inputs)


class TensorPairs(PosePairs):
    """Pairs whose images ``(N, 3, R, R)`` (uint8, or float in [0, 1]) are in memory."""

    def __init__(self, images: Tensor, joints: Tensor) -> None:
        super().__init__(joints)
        if images.dim() != 4 or images.shape[1] != 3 or images.shape[0] != len(self):
            raise ValueError(f"images must be ({len(self)}, 3, R, R) for {len(self)} joint "
                             f"sets, got {tuple(images.shape)}")
        self.images = images

    def image(self, i: int) -> Tensor:
        return self.images[i]


class DrPose15KPairs(PosePairs):
    """Samples ``rows`` of a DrPose15K dataset: the SMPL-X joints of PoseScore, normalised by
    each sample's front camera, held; the image read from its PNG per item."""

    def __init__(self, dataset: DrPoseDataset, rows: Sequence[int] | Tensor) -> None:
        rows = torch.as_tensor(rows, dtype=torch.long)
        index = dataset.index
        picked = rows.numpy()
        joints = torch.from_numpy(index["joints"][picked][:, list(POSESCORE_JOINTS.indices)])
        normalization = cameras.BodyNormalization(
            center=torch.from_numpy(index["camera_center"][picked]),
            scale=torch.from_numpy(index["camera_scale"][picked]))
        super().__init__(normalization.apply(joints.float()))
        self.root = dataset.root
        self.files = [Path(shard_name(int(dataset.shard_of[r]))) / image_name(
            int(index["sample"][r])) for r in picked]

    def image(self, i: int) -> Tensor:
        return read_rgba(self.root / SHARDS_DIR / self.files[i])[:3]


def step_picks(seed: int, index: int, rank: int, count: int, batch_size: int
               ) -> tuple[torch.Generator, Tensor]:
    """Micro-batch ``index``'s generator (:func:`drpose.train.engine.step_generator`) and the
    ``batch_size`` sample indices in ``[0, count)`` drawn first from it; the generator goes
    on to draw the step's noise."""
    from drpose.train.engine import step_generator  # train builds on data, not the reverse

    generator = step_generator(seed, index, rank)
    return generator, torch.randint(count, (batch_size,), generator=generator)


class StepPicks(Sampler[list[int]]):
    """The sample indices of micro-batches ``start, start + 1, ..., end - 1``
    (:func:`step_picks`), as a DataLoader's ``batch_sampler``."""

    def __init__(self, count: int, batch_size: int, seed: int, rank: int, start: int, end: int
                 ) -> None:
        self.count, self.batch_size, self.seed, self.rank = count, batch_size, seed, rank
        self.start, self.end = start, end

    def __len__(self) -> int:
        return max(0, self.end - self.start)

    def __iter__(self) -> Iterator[list[int]]:
        for index in range(self.start, self.end):
            yield step_picks(self.seed, index, self.rank, self.count, self.batch_size)[1].tolist()


class StepBatches:
    """Micro-batches of ``pairs`` for training steps ``[start, end)``, loaded ahead of use by a
    DataLoader with ``workers`` processes (0: in the training process) and, on CUDA, pinned
    host memory and asynchronous copies.

    :meth:`get` is called with consecutive micro-batch indices (a resumed run starts
    anywhere); another index restarts the loader there. ``get(k, picks)`` checks that the
    loaded samples are ``picks``, the ones the step drew.
    """

    def __init__(self, pairs: PosePairs, batch_size: int, seed: int, rank: int, end: int, *,
                 device: torch.device, workers: int = 0) -> None:
        if workers < 0:
            raise ValueError(f"workers must be >= 0, got {workers}")
        self.pairs, self.batch_size, self.seed, self.rank, self.end = (
            pairs, batch_size, seed, rank, end)
        self.device, self.workers = torch.device(device), workers
        self._next: int | None = None
        self._batches: Iterator[list[Tensor]] | None = None

    def _start(self, index: int) -> None:
        picks = StepPicks(len(self.pairs), self.batch_size, self.seed, self.rank, index, self.end)
        loader = DataLoader(self.pairs, batch_sampler=picks, num_workers=self.workers,
                            pin_memory=self.device.type == "cuda",
                            prefetch_factor=2 if self.workers else None)
        self._batches, self._next = iter(loader), index

    def get(self, index: int, picks: Tensor) -> tuple[Inputs, Tensor]:
        """(images ``(B, 3, R, R)`` float in [0, 1] (or the encodings), joints ``(B, J, 3)``)
        of micro-batch ``index``, on the device."""
        if index != self._next or self._batches is None:
            self._start(index)
        images, joints, rows = next(self._batches)
        self._next = index + 1
        if not torch.equal(rows, picks):
            raise RuntimeError(f"micro-batch {index}: loaded samples {rows.tolist()}, the step "
                               f"drew {picks.tolist()}")
        non_blocking = self.device.type == "cuda"
        return (inputs_on(images, self.device, non_blocking),
                joints.to(self.device, non_blocking=non_blocking))

    def close(self) -> None:
        """Stop the worker processes (they also stop when this object is collected)."""
        self._batches, self._next = None, None

