"""The training machinery every stage shares: config, accelerate, checkpoints, logging.

A stage (VAE, multi-view pretraining, g_skel, reward fine-tuning) supplies a model, its trainable
parameters and a ``step(batch_index) -> StepOutput`` that computes a loss; :class:`Trainer` does
the rest:

* ``accelerate`` for one or many processes (CPU/gloo or GPUs), mixed precision on GPUs, gradient
  accumulation, gradient clipping;
* a NaN/Inf guard: a step whose loss or gradients are not finite is skipped (no optimizer update)
  and logged, and training goes on (with fp16, the grad scaler is still updated: its scale
  backs off);
* checkpoints written atomically (a temporary folder renamed into place, then the ``latest``
  pointer replaced), holding the trainable weights (safetensors), the optimizer state, every RNG
  state and the step, so ``resume=True`` continues exactly where the run stopped: data order and
  random draws are functions of (seed, step), never of how the run was split;
* JSON-lines and TensorBoard logs, and a tqdm progress bar with the stage's metrics and step time.

A stage starts with :meth:`Trainer.begin`: it locks the run folder (a second run on the same
folder at once is refused), refuses to start afresh over a run that has checkpoints, and with
``resume=True`` loads the newest usable checkpoint (a damaged one is skipped with a warning
naming its file) or refuses when there is none.
"""

from __future__ import annotations

import fcntl
import json
import math
import os
import random
import re
import shutil
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator, PartialState
from safetensors.torch import load_file
from torch import Tensor, nn

from drpose._cli import UsageError
from drpose._devices import require_device, resolve_device, same_device
from drpose._files import save_safetensors
from drpose._progress import progress

CHECKPOINTS = "checkpoints"
LATEST = "latest"
LOCK = ".lock"
STEP_FOLDER = re.compile(r"step_(\d+)")
MIXED_PRECISION = ("no", "fp16", "bf16")
PROGRESS_KEYS = ("loss", "reward", "kl", "step_time_s")


@dataclass
class TrainConfig:
    """Options every stage has (a stage's own config embeds one as ``train``)."""

    name: str = "run"
    runs_dir: str = "runs"
    seed: int = 0
    steps: int = 100
    lr: float = 1e-4
    weight_decay: float = 0.0
    grad_accum: int = 1
    clip_grad_norm: float | None = 1.0
    mixed_precision: str | None = None  # "no" | "fp16" | "bf16" (GPUs); None: bf16 on CUDA
    device: str | None = None  # "cpu", "cuda", "cuda:1", ...; None: CUDA when there is a GPU
    checkpoint_every: int = 50
    keep_checkpoints: int = 2
    log_every: int = 10
    progress: bool = True

    def __post_init__(self) -> None:
        for name in ("steps", "grad_accum", "checkpoint_every", "keep_checkpoints", "log_every"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise UsageError(f"--train.{name} must be an integer >= 1, got {value!r}")
        if self.mixed_precision is not None and self.mixed_precision not in MIXED_PRECISION:
            raise UsageError(f"--train.mixed_precision must be one of {', '.join(MIXED_PRECISION)}"
                             f", got {self.mixed_precision!r}")
        if self.clip_grad_norm is not None and not self.clip_grad_norm > 0:
            raise UsageError("--train.clip_grad_norm must be > 0 (or null in a config file), "
                             f"got {self.clip_grad_norm!r}")

    @property
    def run_dir(self) -> Path:
        return Path(self.runs_dir) / self.name

    def precision_on(self, device: torch.device) -> str:
        """The mixed precision a run on ``device`` uses: ``mixed_precision`` on CUDA (``bf16``
        when None, as diffusers' training scripts are run); ``no`` on any other device."""
        if device.type != "cuda":
            return "no"
        return self.mixed_precision or "bf16"

    def resolve_device(self) -> torch.device:
        """The run's device (:func:`drpose._devices.resolve_device` of ``device``)."""
        return resolve_device(self.device, "--train.device")


@dataclass
class StepOutput:
    """What a stage's step returns: the loss to minimise and scalars to log."""

    loss: Tensor
    metrics: dict[str, float] = field(default_factory=dict)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def stage_device(config: TrainConfig) -> torch.device:
    """Where a stage puts its models, batches and draws: ``config.device`` when given, else this
    process's device as accelerate assigns it (its own GPU under torchrun, the CPU without a
    GPU). What :class:`Trainer` uses, so a stage may resolve it before building the trainer."""
    if config.device is not None:
        return config.resolve_device()
    return PartialState(cpu=not torch.cuda.is_available()).device


def weight_dtype(precision: str) -> torch.dtype:
    """The dtype frozen weights are stored in under ``precision`` (``no``: float32)."""
    return {"no": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]


def step_generator(seed: int, step: int, rank: int = 0) -> torch.Generator:
    """The random source of one step: a function of (seed, step, rank) only, so a resumed run
    draws exactly what an uninterrupted one would."""
    return torch.Generator().manual_seed(hash((seed, step, rank)) % 2**63)


class Trainer:
    """Runs ``steps`` optimisation steps of a stage, with checkpoints and logs in ``run_dir``.

    Args:
        config: the shared options.
        model: the module holding every trainable parameter (it is what accelerate wraps).
        parameters: the parameters to optimise (``requires_grad`` ones of ``model`` if None).
        optimizer: built from ``parameters`` with AdamW when None.
        accelerator: an existing ``Accelerator`` (one is created when None, on
            ``config.device``).

    ``device``: :func:`stage_device`, where the stage puts its models and batches; ``model``
    must be there already (a ValueError naming both devices otherwise).
    """

    def __init__(self, config: TrainConfig, model: nn.Module,
                 parameters: Iterable[nn.Parameter] | None = None,
                 optimizer: torch.optim.Optimizer | None = None,
                 accelerator: Accelerator | None = None) -> None:
        self.config = config
        self.device = stage_device(config)
        if self.device.type == "cuda":
            torch.cuda.set_device(self.device)  # accelerate's device in a single process
        self.accelerator = accelerator or Accelerator(
            gradient_accumulation_steps=config.grad_accum,
            mixed_precision=config.precision_on(self.device),
            cpu=self.device.type == "cpu",
        )
        if not same_device(self.device, self.accelerator.device):
            raise UsageError(f"--train.device {config.device}: under torchrun each process uses "
                             f"its own device ({self.accelerator.device} here); leave "
                             "--train.device out")
        require_device(self.device, model=model)  # the stage moves its model first
        params = [p for p in (parameters or model.parameters()) if p.requires_grad]
        if not params:
            raise ValueError("Trainer: nothing to train (no parameter requires grad)")
        optimizer = optimizer or torch.optim.AdamW(params, lr=config.lr,
                                                   weight_decay=config.weight_decay)
        # The model is not wrapped in DistributedDataParallel: stages call it several times per
        # step (DDIM rollouts, a KL reference with adapters off), which DDP's reducer does not
        # allow; gradients are averaged across processes in one flat all-reduce instead.
        self.model = model
        self.optimizer = self.accelerator.prepare(optimizer)
        self.params = params
        self.step = 0
        self.run_dir = config.run_dir
        self._log_file = None
        self._tensorboard = None
        self._lock = None

    # ---- starting a run --------------------------------------------------------------------

    def begin(self, resume: bool) -> bool:
        """Lock ``run_dir`` and start the run: continue its newest usable checkpoint when
        ``resume`` (a :class:`UsageError` when it has none), else refuse a folder that already
        holds checkpoints. True when resumed. :meth:`close` releases the lock."""
        self._acquire_lock()
        root = self.run_dir / CHECKPOINTS
        if resume:
            if not self.resume():
                raise UsageError(f"--resume: {root} holds no checkpoint to continue; start "
                                 "without --resume")
            return True
        if has_checkpoint(self.run_dir):
            raise UsageError(
                f"{self.run_dir} already holds a run (checkpoints in {root}): continue it with "
                "--resume, give this run another --train.name or --train.runs_dir, or pass "
                "--overwrite to delete the old one")
        return False

    def _acquire_lock(self) -> None:
        if not self.accelerator.is_main_process or self._lock is not None:
            return
        self._lock = _lock_folder(self.run_dir)

    # ---- checkpoints ---------------------------------------------------------------------

    def trainable_state(self) -> dict[str, Tensor]:
        """The trainable tensors by name (what a checkpoint stores)."""
        names = {id(p): n for n, p in self.model.named_parameters()}
        return {names[id(p)]: p.detach().cpu().contiguous() for p in self.params}

    def save_checkpoint(self) -> Path:
        """Write ``checkpoints/step_NNNNNNN`` atomically and point ``latest`` at it."""
        root = self.run_dir / CHECKPOINTS
        final = root / f"step_{self.step:07d}"
        if self.accelerator.is_main_process:
            tmp = root / f".{final.name}.tmp"
            shutil.rmtree(tmp, ignore_errors=True)
            tmp.mkdir(parents=True)
            save_safetensors(self.trainable_state(), tmp / "trainable.safetensors")
            torch.save(self.optimizer.state_dict(), tmp / "optimizer.pt")
            save_safetensors(_rng_state(), tmp / "rng.safetensors")
            (tmp / "state.json").write_text(json.dumps(
                {"step": self.step, "config": asdict(self.config)}, indent=1, default=str))
            _fsync_tree(tmp)
            shutil.rmtree(final, ignore_errors=True)
            os.replace(tmp, final)
            _atomic_write_text(root / LATEST, final.name)
            self._prune(root)
        self.accelerator.wait_for_everyone()
        return final

    def resume(self) -> bool:
        """Load the newest usable checkpoint of ``run_dir``; False when it has none at all.

        The one ``latest`` names is tried first, then the other kept ones, newest first; a
        damaged one (a truncated or empty file, ``latest`` naming a missing folder) is skipped
        with a warning naming the file, and renamed ``<name>.damaged`` so that pruning never
        keeps it in place of a good one. A :class:`UsageError` naming the files when none is
        usable."""
        root = self.run_dir / CHECKPOINTS
        pointer = root / LATEST
        candidates = sorted(_step_folders(root), key=_step_number, reverse=True)
        if pointer.is_file():
            named = root / pointer.read_text().strip()
            if named.is_dir():
                candidates = [named] + [p for p in candidates if p != named]
            else:
                warnings.warn(f"{pointer} names {named.name}, which does not exist; trying the "
                              "other kept checkpoints", stacklevel=2)
        if not candidates:
            if pointer.is_file():
                raise UsageError(f"{pointer} names a missing checkpoint and {root} holds no "
                                 "other: nothing to resume; delete the run folder or start "
                                 "under another --train.name")
            return False
        problems = []
        for folder in candidates:
            try:
                state, weights, optimizer_state, rng = _read_checkpoint(folder)
            except _DamagedCheckpoint as damaged:
                problems.append(str(damaged))
                warnings.warn(f"skipping damaged checkpoint: {damaged}", stacklevel=2)
                continue
            self._load(folder, state, weights, optimizer_state, rng)
            if problems and self.accelerator.is_main_process:
                for bad in sorted(_step_folders(root), key=_step_number):
                    if _step_number(bad) > self.step:
                        os.replace(bad, bad.with_name(bad.name + ".damaged"))
                _atomic_write_text(pointer, folder.name)
            self.accelerator.wait_for_everyone()
            return True
        raise UsageError(f"no usable checkpoint in {root}: {'; '.join(problems)}")

    def _load(self, folder: Path, state: dict, weights: dict[str, Tensor],
              optimizer_state: dict, rng: dict[str, Tensor]) -> None:
        by_name = dict(self.model.named_parameters())
        missing = sorted(set(self.trainable_state()) - set(weights))
        if missing:
            raise ValueError(f"checkpoint {folder} lacks trainable tensors: {missing[:10]}")
        with torch.no_grad():
            for name, value in weights.items():
                by_name[name].copy_(value)
        self.optimizer.load_state_dict(optimizer_state)
        _set_rng_state(rng)
        self.step = int(state["step"])

    def _prune(self, root: Path) -> None:
        """Keep the checkpoint just written and the ``keep_checkpoints - 1`` newest before it,
        ordered by step number (not by folder name)."""
        older = sorted((p for p in _step_folders(root) if _step_number(p) < self.step),
                       key=_step_number)
        for old in older[: max(0, len(older) - (self.config.keep_checkpoints - 1))]:
            shutil.rmtree(old, ignore_errors=True)

    # ---- logging ---------------------------------------------------------------------------

    def log(self, metrics: dict[str, float]) -> None:
        """Append one JSON line and TensorBoard scalars (main process only)."""
        if not self.accelerator.is_main_process:
            return
        if self._log_file is None:
            self.run_dir.mkdir(parents=True, exist_ok=True)
            self._log_file = open(self.run_dir / "log.jsonl", "a")  # noqa: SIM115
            self._tensorboard = _tensorboard_writer(self.run_dir / "tensorboard")
        record = {"step": self.step, "time": time.time(), **metrics}
        self._log_file.write(json.dumps(record) + "\n")
        self._log_file.flush()
        if self._tensorboard is not None:
            for key, value in metrics.items():
                if isinstance(value, (int, float)):
                    self._tensorboard.add_scalar(key, value, self.step)

    def close(self) -> None:
        """Close the logs and release the run folder's lock."""
        if self._lock is not None:
            self._lock.close()  # closing the file releases its flock
            self._lock = None
        if self._log_file is not None:
            self._log_file.close()
            self._log_file = None
        if self._tensorboard is not None:
            self._tensorboard.close()
            self._tensorboard = None

    # ---- the loop --------------------------------------------------------------------------

    def fit(self, step_fn: Callable[[int], StepOutput], *,
            on_checkpoint: Callable[[int], None] | None = None,
            stop_after: int | None = None) -> dict[str, float]:
        """Run optimisation steps until ``config.steps`` (or ``stop_after`` steps this call).

        ``step_fn(step)`` computes one micro-batch's loss; it is called ``grad_accum`` times per
        optimisation step with ``step * grad_accum + micro`` so its data and randomness are a
        function of that index. Returns the last logged metrics.
        """
        config = self.config
        accelerator = self.accelerator
        self.model.train()
        end = config.steps if stop_after is None else min(config.steps, self.step + stop_after)
        bar = progress(total=config.steps, initial=self.step, desc=config.name,
                       dynamic_ncols=True,
                       enabled=config.progress and accelerator.is_main_process)
        last: dict[str, float] = {}
        skipped = 0
        while self.step < end:
            started = time.perf_counter()
            sums: dict[str, float] = {}
            finite = True
            for micro in range(config.grad_accum):
                with accelerator.accumulate(self.model), accelerator.autocast():
                    out = step_fn(self.step * config.grad_accum + micro)
                    finite &= bool(torch.isfinite(out.loss.detach()).all())
                    accelerator.backward(out.loss)  # accelerate divides by grad_accum
                    for key, value in {"loss": float(out.loss.detach()), **out.metrics}.items():
                        sums[key] = sums.get(key, 0.0) + value / config.grad_accum
            grad_norm = self._clip_and_check()
            finite &= math.isfinite(grad_norm)
            if finite:
                self.optimizer.step()  # with fp16, the grad scaler's step and update
            else:
                skipped += 1
                self._skip_scaler_step(grad_norm)
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            last = {**sums, "grad_norm": grad_norm, "step_time_s": time.perf_counter() - started,
                    "skipped_steps": skipped}
            if not finite:
                self.log({**last, "event": "skipped non-finite step"})
            elif self.step % config.log_every == 0 or self.step == end:
                self.log(last)
            bar.set_postfix({k: f"{v:.4g}" for k, v in last.items() if k in PROGRESS_KEYS})
            bar.update(1)
            if self.step % config.checkpoint_every == 0 or self.step == end:
                self.save_checkpoint()
                if on_checkpoint is not None:
                    on_checkpoint(self.step)
        bar.close()
        return last

    def _skip_scaler_step(self, grad_norm: float) -> None:
        """With fp16's grad scaler, a skipped step still updates it, as ``scaler.step`` would:
        the gradients were unscaled (inf found, so the scale backs off); without the update the
        next step's unscale raises and the first overflow would end the run."""
        scaler = self.accelerator.scaler
        if scaler is not None and any(p.grad is not None for p in self.params):
            if math.isfinite(grad_norm):  # a non-finite loss with finite gradients
                scaler.update(scaler.get_scale() * scaler.get_backoff_factor())
            else:
                scaler.update()

    def _clip_and_check(self) -> float:
        grads = [p.grad for p in self.params if p.grad is not None]
        if not grads:
            return 0.0
        if self.accelerator.num_processes > 1:
            flat = torch.cat([g.reshape(-1) for g in grads])
            flat = self.accelerator.reduce(flat, reduction="mean")
            for g, part in zip(grads, flat.split([g.numel() for g in grads]), strict=True):
                g.copy_(part.view_as(g))
        if self.config.clip_grad_norm is not None:
            norm = self.accelerator.clip_grad_norm_(self.params, self.config.clip_grad_norm)
        else:
            norm = torch.linalg.vector_norm(torch.stack([g.norm() for g in grads]))
        return float(norm)


def _lock_folder(folder: Path) -> Any:
    """An open file holding an exclusive ``flock`` on ``folder/.lock`` (closing it releases
    the lock); a :class:`UsageError` naming the folder when another process holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    lock = open(folder / LOCK, "a")  # noqa: SIM115 (held by the caller)
    try:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        lock.close()
        raise UsageError(f"{folder} is in use by another run (locked: {folder / LOCK}); wait "
                         "for it to end or use another --train.name") from None
    return lock


def clear_run(run_dir: str | Path) -> None:
    """Delete everything in ``run_dir`` (``--overwrite``), under its lock: a
    :class:`UsageError` when a run is using the folder."""
    run_dir = Path(run_dir)
    with _lock_folder(run_dir):
        for path in run_dir.iterdir():
            if path.name != LOCK:
                shutil.rmtree(path) if path.is_dir() else path.unlink()


def has_checkpoint(run_dir: str | Path) -> bool:
    """True when ``run_dir`` holds a checkpoint (what :meth:`Trainer.begin` refuses to start
    afresh over); the cached default chain continues such an interrupted build."""
    root = Path(run_dir) / CHECKPOINTS
    return bool(_step_folders(root)) or (root / LATEST).exists()


class _DamagedCheckpoint(Exception):
    """A checkpoint file that cannot be read; the message names it."""


def _step_folders(root: Path) -> list[Path]:
    if not root.is_dir():
        return []
    return [p for p in root.iterdir() if p.is_dir() and STEP_FOLDER.fullmatch(p.name)]


def _step_number(folder: Path) -> int:
    return int(STEP_FOLDER.fullmatch(folder.name).group(1))


def _read_checkpoint(folder: Path) -> tuple[dict, dict[str, Tensor], dict, dict[str, Tensor]]:
    """(state, trainable weights, optimizer state, RNG state) of one checkpoint folder, all read
    before anything is loaded; :class:`_DamagedCheckpoint` naming the first unreadable file."""
    readers: list[tuple[str, Callable[[Path], Any]]] = [
        ("state.json", lambda path: json.loads(path.read_text())),
        ("trainable.safetensors", load_file),
        ("optimizer.pt", lambda path: torch.load(path, weights_only=True, map_location="cpu")),
        ("rng.safetensors", load_file),
    ]
    values = []
    for name, read in readers:
        path = folder / name
        try:
            values.append(read(path))
        # what a truncated or empty file raises depends on its reader (JSONDecodeError,
        # SafetensorError, UnpicklingError, RuntimeError, EOFError, OSError): all mean damaged
        except Exception as error:
            raise _DamagedCheckpoint(f"{path} ({type(error).__name__}: "
                                     f"{' '.join(str(error).split())[:120]})") from error
    state = values[0]
    if not isinstance(state, dict) or not isinstance(state.get("step"), int):
        raise _DamagedCheckpoint(f"{folder / 'state.json'} (no integer 'step')")
    return values[0], values[1], values[2], values[3]


def _rng_state() -> dict[str, Tensor]:
    state = {"torch": torch.get_rng_state(),
             "numpy": torch.from_numpy(np.frombuffer(
                 json.dumps(_numpy_state()).encode(), dtype=np.uint8).copy()),
             "python": torch.frombuffer(bytearray(json.dumps(random.getstate()).encode()),
                                        dtype=torch.uint8)}
    if torch.cuda.is_available():
        for i, s in enumerate(torch.cuda.get_rng_state_all()):
            state[f"cuda{i}"] = s
    return state


def _numpy_state() -> list:
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    return [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)]


def _set_rng_state(state: dict[str, Tensor]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, pos, has_gauss, cached = json.loads(bytes(state["numpy"].tolist()).decode())
    np.random.set_state((kind, np.array(keys, dtype=np.uint32), pos, has_gauss, cached))
    version, internal, gauss = json.loads(bytes(state["python"].tolist()).decode())
    random.setstate((version, tuple(internal), gauss))
    if torch.cuda.is_available():
        torch.cuda.set_rng_state_all([state[k] for k in sorted(state) if k.startswith("cuda")])


def _fsync_tree(folder: Path) -> None:
    for path in folder.iterdir():
        with open(path, "rb") as f:
            os.fsync(f.fileno())


def _atomic_write_text(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _tensorboard_writer(folder: Path) -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # tensorboard is optional: JSON lines are always written
        return None
    return SummaryWriter(str(folder))
