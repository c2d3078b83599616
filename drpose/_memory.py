"""Peak tensor memory of a piece of code, measured the same way on every device.

On CUDA with the allocator's peak counter; on the CPU, where torch keeps no such counter, by a
dispatch mode that watches every tensor storage created while the code runs and adds up those
still alive after each op. That counts all tensors the code allocates (outputs, temporaries,
autograd's saved tensors), not the allocator's caching or a compiled kernel's private scratch.
Tensors that existed before (weights) are not counted.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch.multiprocessing.reductions import StorageWeakRef
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten


def _storage_key(t: torch.Tensor) -> int:
    return t.untyped_storage().data_ptr()


class LiveTensorBytes(TorchDispatchMode):
    """Inside ``with LiveTensorBytes() as m:``, ``m.peak`` is the most bytes of tensors created
    inside and alive at once, ``m.current()`` the bytes alive now."""

    def __init__(self) -> None:
        super().__init__()
        self.live: dict[int, tuple[StorageWeakRef, int]] = {}
        self.peak = 0

    def current(self) -> int:
        self.live = {k: v for k, v in self.live.items() if not v[0].expired()}
        return sum(n for _, n in self.live.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        # views and in-place results share an input's storage: not a new allocation
        inputs = {_storage_key(t) for t in tree_flatten((args, kwargs))[0]
                  if isinstance(t, torch.Tensor)}
        for t in tree_flatten(out)[0]:
            if isinstance(t, torch.Tensor) and _storage_key(t) not in inputs:
                storage = t.untyped_storage()
                self.live.setdefault(_storage_key(t), (StorageWeakRef(storage),
                                                       storage.nbytes()))
        self.peak = max(self.peak, self.current())
        return out


def peak_memory_bytes(fn: Callable[[], object], device: torch.device | str | None = None) -> int:
    """Peak bytes of tensors allocated (and alive at once) while ``fn()`` runs: the CUDA
    allocator's peak when ``device`` is CUDA (default: when CUDA is available), else
    :class:`LiveTensorBytes`."""
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        start = torch.cuda.memory_allocated(device)
        fn()
        torch.cuda.synchronize(device)
        return torch.cuda.max_memory_allocated(device) - start
    with LiveTensorBytes() as mode:
        fn()
    return mode.peak
