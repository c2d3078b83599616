"""The GPU architecture a launch is configured for.

On a CUDA tensor it is the device's compute capability (``torch.cuda.get_device_capability``),
as an int ``10 * major + minor`` (80 for an A100, 86 for an RTX 3090 / A10, 89 for an RTX 4090 /
L40, 90 for an H100). Under the Triton interpreter there is no GPU: the launchers then configure
for ``DRPOSE_TRITON_ARCH`` (default 80), so the tests can run every arch's configuration on the
CPU and ``python -m drpose.ops.gpu_check`` can record the launches each arch would get.
"""

from __future__ import annotations

import os

import torch

ARCH_ENV = "DRPOSE_TRITON_ARCH"
INTERPRETER_DEFAULT_ARCH = 80


def target_arch(device: torch.device) -> int:
    """Compute capability ``10 * major + minor`` that a launch on ``device`` is configured for."""
    if device.type == "cuda":
        major, minor = torch.cuda.get_device_capability(device)
        return 10 * major + minor
    value = os.environ.get(ARCH_ENV, "")
    if not value:
        return INTERPRETER_DEFAULT_ARCH
    if not value.isdigit():
        raise ValueError(f"{ARCH_ENV} must be a compute capability such as 80 or 90, got {value!r}")
    return int(value)
