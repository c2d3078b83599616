"""The run's device: chosen once (``--device``, ``--train.device``), checked where tensors meet.

Every stage resolves one device (:func:`resolve_device`: the option when given, else CUDA when
there is a GPU, else the CPU), moves its models there and hands its batches to them there; code
that combines modules and tensors from different places checks them with
:func:`require_device` so that a mismatch names both sides instead of failing deep inside an op.

Random draws go through :func:`randn`: numbers come from the generator's own device (a CPU
generator gives the same noise whatever device the run uses, so a run moved to another device or
resumed draws what it drew; a CUDA generator draws on its GPU) and land on the run's device.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor, nn

from drpose._cli import UsageError


def resolve_device(requested: str | torch.device | None = None, flag: str = "--device"
                   ) -> torch.device:
    """The device of a run: ``requested`` when given, else ``cuda`` when a GPU is visible, else
    ``cpu``. A bare ``cuda`` becomes the current GPU (``cuda:0`` unless set otherwise).

    Raises:
        UsageError: naming ``flag`` when ``requested`` is not a device name, or names a CUDA
            device that this machine does not have.
    """
    if requested is None:
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        device = torch.device(requested)
    except (RuntimeError, TypeError):
        raise UsageError(f"{flag} {requested!r}: not a device name (cpu, cuda, cuda:1, ...)"
                         ) from None
    if device.type != "cuda":
        return device
    if not torch.cuda.is_available():
        raise UsageError(f"{flag} {requested}: this machine has no CUDA device (torch "
                         f"{torch.__version__}, CUDA build: {torch.version.cuda or 'none'}); "
                         f"use {flag} cpu or leave it out")
    index = torch.cuda.current_device() if device.index is None else device.index
    if index >= torch.cuda.device_count():
        raise UsageError(f"{flag} {requested}: there are {torch.cuda.device_count()} CUDA "
                         f"device(s), cuda:0 to cuda:{torch.cuda.device_count() - 1}")
    return torch.device("cuda", index)


def same_device(a: torch.device, b: torch.device) -> bool:
    """True when ``a`` and ``b`` are one device (``cuda`` without an index is the current
    GPU)."""
    a, b = torch.device(a), torch.device(b)
    if a.type != b.type:
        return False
    if a.index is None or b.index is None:
        gpu = a.type == "cuda" and torch.cuda.is_available()
        current = torch.cuda.current_device() if gpu else 0
        return (a.index if a.index is not None else current) == (
            b.index if b.index is not None else current)
    return a.index == b.index


def devices_of(item: nn.Module | Tensor) -> list[torch.device]:
    """The distinct devices of a tensor, or of a module's parameters and buffers (in order of
    first appearance; empty for a module without tensors)."""
    if isinstance(item, Tensor):
        return [item.device]
    found: list[torch.device] = []
    for tensor in (*item.parameters(), *item.buffers()):
        if tensor.device not in found:
            found.append(tensor.device)
    return found


def require_device(device: torch.device | str, owner: str = "the run",
                   **items: nn.Module | Tensor | None) -> None:
    """Check that every named module (all its parameters and buffers) and tensor is on
    ``device``, the device of ``owner``; None items are skipped.

    Raises:
        ValueError: naming each item that is elsewhere and where it is, and ``owner``'s device.
    """
    device = torch.device(device)
    wrong = []
    for name, item in items.items():
        if item is None:
            continue
        found = devices_of(item)
        if any(not same_device(d, device) for d in found):
            wrong.append(f"{name} on {', '.join(map(str, found))}")
    if wrong:
        raise ValueError(f"device mismatch: {'; '.join(wrong)}, but {owner} is on {device}: "
                         f"move them there with .to({str(device)!r})")


def randn(shape: Sequence[int], generator: torch.Generator | None, device: torch.device | str,
          dtype: torch.dtype = torch.float32) -> Tensor:
    """Standard normal noise of ``shape`` drawn in float32 on ``generator``'s device (on
    ``device`` when None), returned on ``device`` in ``dtype``."""
    where = generator.device if generator is not None else torch.device(device)
    noise = torch.randn(tuple(shape), generator=generator, device=where, dtype=torch.float32)
    return noise.to(device=device, dtype=dtype)
