"""Lazy access to the compiled extension ``drpose._C``.

Nothing here compiles: the extension is built ahead of time by ``pip install -e .
--no-build-isolation``. When it cannot be imported, :func:`load` warns once and returns ``None``,
and ops asked for ``backend="auto"`` run their torch reference instead.
"""

from __future__ import annotations

import functools
import importlib
import warnings
from types import ModuleType

import torch

BUILD_HINT = "build it with `pip install -e . --no-build-isolation` from the drpose checkout"
MISSING = f"backend='cpu' needs the compiled extension drpose._C; {BUILD_HINT}"
MISSING_CUDA = ("backend='cuda' needs drpose._C built with its CUDA kernels: install the CUDA "
                f"build of torch and a CUDA toolkit (nvcc), then {BUILD_HINT} "
                "(DRPOSE_BUILD_CUDA=1 forces the CUDA build)")


@functools.cache
def load() -> ModuleType | None:
    """Return ``drpose._C``, or ``None`` (after one warning) when it is not built."""
    try:
        return importlib.import_module("drpose._C")
    except ImportError as err:
        warnings.warn(
            f"drpose._C is not available ({err}); CPU ops fall back to the slower torch "
            f"references. To get the C++ kernels, {BUILD_HINT}.",
            RuntimeWarning,
            stacklevel=3,
        )
        return None


@torch.compiler.assume_constant_result
def available() -> bool:
    """Whether ``drpose._C`` is built (a constant for ``torch.compile``)."""
    return load() is not None


def require() -> ModuleType:
    """Return ``drpose._C`` or raise a RuntimeError that says how to build it."""
    ext = load()
    if ext is None:
        raise RuntimeError(MISSING)
    return ext


@torch.compiler.assume_constant_result
def has_cuda() -> bool:
    """Whether ``drpose._C`` is built with its CUDA kernels (csrc/*.cu) and a GPU is usable."""
    ext = load()
    return (ext is not None and hasattr(ext, "rasterize_forward_cuda")
            and torch.cuda.is_available())


@torch.compiler.assume_constant_result
def has_triton() -> bool:
    """Whether triton can be imported (it is needed for CUDA tensors and the interpreter)."""
    return importlib.util.find_spec("triton") is not None
