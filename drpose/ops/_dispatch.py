"""Input checks and backend choice shared by every op in :mod:`drpose.ops`.

Backends: ``"torch"`` (the reference, anywhere), ``"cpu"`` (the C++ kernels of ``drpose._C``),
``"triton"`` (the kernels of ``drpose_kernels``: CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``), and for the ops that have CUDA kernels, ``"cuda"`` (``csrc/*.cu``, when
``drpose._C`` was built with CUDA). ``"auto"`` picks triton for CUDA tensors (then cuda where the
op has it) and cpu for CPU tensors, and falls back to torch (with one warning) when the needed
piece is missing.
"""

from __future__ import annotations

import math
import operator
import os
import warnings

import torch

from drpose import _extension

BACKENDS = ("auto", "torch", "cpu", "triton")


def check_tensor(op: str, name: str, value: object, *, dims: int | None = None,
                 floating: bool = False) -> torch.Tensor:
    """Raise TypeError/ValueError naming ``op`` and ``name`` unless ``value`` fits."""
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"{op}(): {name} must be a torch.Tensor, got {type(value).__name__}")
    if dims is not None and value.dim() != dims:
        raise ValueError(f"{op}(): {name} must have {dims} dimensions, got shape "
                         f"{tuple(value.shape)}")
    if floating and not value.is_floating_point():
        raise TypeError(f"{op}(): {name} must be a floating-point tensor (float16, bfloat16, "
                        f"float32 or float64), got {value.dtype}")
    return value


def check_same_device(op: str, **tensors: torch.Tensor | None) -> torch.device:
    """Raise ValueError unless every given tensor is on one device; return that device."""
    given = {name: t for name, t in tensors.items() if t is not None}
    devices = {t.device for t in given.values()}
    if len(devices) > 1:
        where = ", ".join(f"{name} on {t.device}" for name, t in given.items())
        raise ValueError(f"{op}(): all tensors must be on one device, got {where}")
    return devices.pop()


def check_size(op: str, name: str, size: object) -> tuple[int, int]:
    """``size`` as (H, W) positive ints, or a ValueError naming ``name`` (a float such as 5.5, a
    bool or a value <= 0 is refused; 5.0 too: sizes are counts of pixels)."""
    try:
        height, width = (operator.index(s) for s in size)  # ints only, not 5.0
        if isinstance(size[0], bool) or isinstance(size[1], bool):
            raise TypeError
    except (TypeError, ValueError):
        raise ValueError(f"{op}(): {name} must be (H, W), two positive ints, got {size!r}"
                         ) from None
    if height <= 0 or width <= 0:
        raise ValueError(f"{op}(): {name} must be (H, W), two positive ints, got {size!r}")
    return height, width


def _ram_bytes() -> int:
    """The machine's RAM (0 where the OS does not say)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 0


RAM_BYTES = _ram_bytes()  # read once: a constant that torch.compile traces through


def device_memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device`` (RAM for the CPU), or None where unknown (meta tensors)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    if device.type == "cpu":
        return RAM_BYTES or None
    return None


def check_output_size(op: str, name: str, value: object, shape: tuple[int, ...],
                      dtype: torch.dtype, device: torch.device) -> None:
    """Raise ValueError, naming ``name`` = ``value``, when an output of ``shape`` and ``dtype``
    would need more bytes than ``device`` has in all (instead of failing in the allocator)."""
    limit = device_memory_bytes(device)
    needed = math.prod(shape) * dtype.itemsize
    if limit is not None and needed > limit:
        raise ValueError(f"{op}(): {name}={value!r} asks for a {tuple(shape)} {dtype} output of "
                         f"{needed / 2**30:.1f} GiB, more than the {limit / 2**30:.1f} GiB of "
                         f"memory of {device}; use a smaller {name}")


def triton_interpreted() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") == "1"


def check_cuda_backend(op: str, device: torch.device) -> None:
    """Raise unless backend='cuda' can run on ``device`` (CUDA tensors, drpose._C with CUDA)."""
    if device.type != "cuda":
        raise ValueError(f"{op}(): backend='cuda' needs CUDA tensors, got {device}")
    if not _extension.has_cuda():
        raise RuntimeError(f"{op}(): {_extension.MISSING_CUDA}")


def resolve_backend(op: str, backend: str, device: torch.device,
                    backends: tuple[str, ...] = BACKENDS) -> str:
    """Turn ``backend`` ("auto" included) into the backend that will run on ``device``;
    ``backends`` are the ones ``op`` has (``"cuda"`` among them when it has CUDA kernels)."""
    if backend not in backends:
        raise ValueError(f"{op}(): backend must be one of {backends}, got {backend!r}")
    if backend == "auto":
        if device.type == "cuda":
            if _extension.has_triton():
                return "triton"
            if "cuda" in backends and _extension.has_cuda():
                return "cuda"
            warnings.warn(f"{op}(): neither triton nor drpose._C's CUDA kernels are available; "
                          "running the torch reference on CUDA (pip install triton)",
                          RuntimeWarning, stacklevel=3)
            return "torch"
        if device.type == "cpu" and _extension.available():
            return "cpu"
        return "torch"
    if backend == "cpu":
        if device.type != "cpu":
            raise ValueError(f"{op}(): backend='cpu' needs CPU tensors, got {device}")
        if not _extension.available():
            raise RuntimeError(f"{op}(): {_extension.MISSING}")
    if backend == "cuda":
        check_cuda_backend(op, device)
    if backend == "triton":
        if not _extension.has_triton():
            raise RuntimeError(f"{op}(): backend='triton' needs triton (pip install triton)")
        if device.type != "cuda" and not triton_interpreted():
            raise ValueError(f"{op}(): backend='triton' needs CUDA tensors (or TRITON_INTERPRET=1 "
                             f"set before triton is imported, for testing), got {device}")
    return backend
