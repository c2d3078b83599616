"""GPU compile gate for the Triton kernels, on a machine without a GPU (``make gpu-check``).

``python -m drpose.ops.gpu_check`` does three things:

1. **Capture.** A child process with ``TRITON_INTERPRET=1`` runs the Triton path of every public
   op (:data:`CASES`: forward and backward, every dtype the op accepts) once per target arch
   (``DRPOSE_TRITON_ARCH``, which the launchers read to pick their configuration, see
   :mod:`drpose_kernels._arch`). A wrapper around the interpreter's ``run`` (the method every
   ``kernel[grid](...)`` launch goes through, autotuned ones included) records each launch: the
   kernel (module and name), the argument types and values, the constexprs, ``num_warps`` and
   ``num_stages``. Kernels added later are recorded without editing this module.
2. **Compile.** Each distinct launch is compiled ahead of time for its arch with
   ``triton.compile(ASTSource(fn, signature, constexprs, attrs), target=GPUTarget("cuda", arch,
   32), options)``, where signature, constexprs and attributes come from Triton's own launch
   binder (``create_function_from_signature`` + ``JITFunction._pack_args``): ints equal to 1
   become constexprs, pointers and ints divisible by 16 get ``tt.divisibility = 16``, exactly as
   a real launch with those values specialises.
3. **Measure and decide.** The wheel's ``cuobjdump --dump-resource-usage`` reads registers, stack
   (spill) bytes and static shared memory from the cubin; the kernel's dynamic shared memory is
   Triton's ``metadata.shared``. A launch fails the gate when it does not compile, needs more
   shared memory than its arch lets a block have (:data:`SHARED_LIMITS`), or spills (stack > 0)
   in fp16/bf16 or in a kernel outside :data:`FP32_SPILL_TOLERANT` (fp32 attention may spill).

Shapes. The launch configuration of ``pose_heatmap_loss`` depends on the map size H x W and the
dtype (one program per map, so B*V*J only sizes the grid): it runs at PSHuman's 96 x 96 maps
with B1 V2 J3 instead of B2 V6 J23. ``row_attention``'s depends on the dtype, the head dim and
the sequence length V*W: it runs at PSHuman's 6 views x 96 tokens and head dims 40/64/80/128
with one sample, one image row and two heads (B*H and heads only size the grid; two heads, not
one, so the head count is not specialised to the constant 1, like PSHuman's 5-20 heads). The
strides of contiguous inputs keep their divisibility by 16 at these sizes.

Compiled kernels are cached by Triton (keyed by the kernel's source hash, options and target)
under ``.cache/gpu-check/`` unless ``TRITON_CACHE_DIR`` is set.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

ARCHS = (80, 86, 89, 90)
KB = 1024
# Largest shared memory one block may have (static + dynamic, opt-in), CUDA programming guide.
SHARED_LIMITS = {80: 163 * KB, 86: 99 * KB, 89: 99 * KB, 90: 227 * KB}
SPILL_FREE_DTYPES = ("float16", "bfloat16")
# Kernel modules whose fp32 (and fp64) launches may spill; every other kernel must not.
FP32_SPILL_TOLERANT = ("drpose_kernels.row_attention",)
ARCH_ENV = "DRPOSE_TRITON_ARCH"
CACHE_DIR = Path(".cache") / "gpu-check"


# ---- what is recorded and measured -------------------------------------------------------------


@dataclass
class Launch:
    """One kernel launch as the interpreter saw it, replayable by :func:`compile_launch`.

    ``args``/``kwargs`` hold JSON values; a tensor argument is ``{"tensor": dtype name,
    "aligned": data_ptr % 16 == 0}``.
    """

    module: str
    name: str
    arch: int
    op: str
    dtype: str
    case: str
    args: list = field(default_factory=list)
    kwargs: dict = field(default_factory=dict)

    def key(self) -> str:
        return json.dumps([self.module, self.name, self.arch, self.dtype, self.args, self.kwargs],
                          sort_keys=True)


@dataclass
class Row:
    """The gate's result for one launch on one arch."""

    kernel: str
    op: str
    dtype: str
    case: str
    arch: int
    config: str = ""
    registers: int = -1
    stack: int = -1
    shared: int = -1  # bytes, static + dynamic
    error: str = ""
    module: str = ""


def failures(row: Row) -> list[str]:
    """Why ``row`` fails the gate (empty when it passes)."""
    if row.error:
        return [f"does not compile: {row.error}"]
    reasons = []
    limit = SHARED_LIMITS[row.arch]
    if row.shared > limit:
        reasons.append(f"needs {row.shared / KB:.1f} KB of shared memory, sm_{row.arch} allows "
                       f"{limit // KB} KB a block")
    if row.stack > 0 and (row.dtype in SPILL_FREE_DTYPES or row.module not in FP32_SPILL_TOLERANT):
        reasons.append(f"spills {row.stack} bytes of stack per thread")
    return reasons


_RESOURCE_LINE = re.compile(r"Function ([\w$.]+):\s*\n\s*REG:(\d+) STACK:(\d+) SHARED:(\d+)")


def parse_resource_usage(text: str) -> dict[str, tuple[int, int, int]]:
    """``cuobjdump --dump-resource-usage`` output -> {function: (registers, stack, shared)}."""
    return {m[1]: (int(m[2]), int(m[3]), int(m[4])) for m in _RESOURCE_LINE.finditer(text)}


# ---- capture (runs with TRITON_INTERPRET=1) ----------------------------------------------------


def _encode(value):
    import torch

    if isinstance(value, torch.Tensor):
        return {"tensor": str(value.dtype).removeprefix("torch."),
                "aligned": value.data_ptr() % 16 == 0}
    if isinstance(value, torch.dtype):
        return {"dtype": str(value).removeprefix("torch.")}
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise TypeError(f"gpu_check: cannot record a kernel argument of type {type(value).__name__}")


@contextlib.contextmanager
def recording(sink: list[Launch], label: dict) -> Iterator[None]:
    """Record every interpreted Triton launch into ``sink``, tagged with ``label`` (a dict with
    arch, op, dtype, case, which the caller may update between launches).

    A launch that differs from one already run at most in ``num_warps``/``num_stages`` (which
    the interpreter ignores), as when two archs get the same tiles, is recorded but not run
    again: no launch's arguments depend on the values an earlier launch computed, only on shapes
    and dtypes.
    """
    from triton.runtime.interpreter import InterpretedFunction

    original = InterpretedFunction.run
    seen: set[str] = set()

    def run(self, *args, grid, warmup, **kwargs):
        fn = self.fn
        launch = Launch(module=fn.__module__, name=fn.__qualname__, **label,
                        args=[_encode(a) for a in args],
                        kwargs={k: _encode(v) for k, v in kwargs.items()})
        sink.append(launch)
        values = {k: v for k, v in launch.kwargs.items() if k not in ("num_warps", "num_stages")}
        signature = json.dumps([launch.module, launch.name, launch.args, values, grid],
                               sort_keys=True, default=str)
        if signature in seen:
            return None
        seen.add(signature)
        return original(self, *args, grid=grid, warmup=warmup, **kwargs)

    InterpretedFunction.run = run
    try:
        yield
    finally:
        InterpretedFunction.run = original


def _heatmap_cases() -> Iterator[tuple[str, str, Callable[[], None]]]:
    import torch

    from drpose.ops.pose_heatmap_loss import pose_heatmap_loss

    shape = (1, 2, 3, 96, 96)  # PSHuman's 96 x 96 maps; B*V*J only sizes the grid
    for dtype in (torch.float16, torch.bfloat16, torch.float32, torch.float64):
        for loss in ("bce", "mse"):
            for grads in ("none", "logits", "logits+keypoints"):
                def run(dtype=dtype, loss=loss, grads=grads):
                    gen = torch.Generator().manual_seed(0)
                    logits = torch.randn(shape, generator=gen).to(dtype)
                    keypoints = torch.rand(*shape[:3], 2, generator=gen) * 96
                    logits.requires_grad_(grads != "none")
                    keypoints.requires_grad_(grads == "logits+keypoints")
                    value = pose_heatmap_loss(logits, keypoints, loss=loss, backend="triton")
                    if grads != "none":
                        value.backward()
                yield str(dtype).removeprefix("torch."), f"{loss} grad:{grads}", run


def _row_attention_cases() -> Iterator[tuple[str, str, Callable[[], None]]]:
    import torch

    from drpose.ops.row_attention import row_attention

    views, width, height, heads = 6, 96, 1, 2  # rows of 6 views x 96 tokens; B, H, heads: grid
    for dtype in (torch.float16, torch.bfloat16, torch.float32):
        for head_dim in (40, 64, 80, 128):
            def run(dtype=dtype, head_dim=head_dim):
                gen = torch.Generator().manual_seed(0)
                q, k, v = (torch.randn(views, heads, height * width, head_dim, generator=gen)
                           .to(dtype).requires_grad_() for _ in range(3))
                out = row_attention(q, k, v, views=views, height=height, backend="triton")
                out.backward(torch.randn(out.shape, generator=gen).to(dtype))
            yield str(dtype).removeprefix("torch."), f"d{head_dim}", run


CASES: dict[str, Callable[[], Iterator[tuple[str, str, Callable[[], None]]]]] = {
    "pose_heatmap_loss": _heatmap_cases,
    "row_attention": _row_attention_cases,
}


def capture(archs: tuple[int, ...] = ARCHS, ops: tuple[str, ...] = tuple(CASES)) -> list[Launch]:
    """Run every case of :data:`CASES` for every arch under the interpreter; return the launches.

    Needs ``TRITON_INTERPRET=1`` set before triton was imported (see :func:`capture_in_child`).
    """
    launches: list[Launch] = []
    label: dict = {}
    with recording(launches, label):
        for arch in archs:
            os.environ[ARCH_ENV] = str(arch)
            for op in ops:
                for dtype, case, run in CASES[op]():
                    label.update(arch=arch, op=op, dtype=dtype, case=case)
                    run()
    return launches


def capture_in_child(archs: tuple[int, ...], ops: tuple[str, ...]) -> list[Launch]:
    """:func:`capture` in a child process (the interpreter must be on before triton imports)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "launches.json"
        env = dict(os.environ, TRITON_INTERPRET="1", OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, "-m", "drpose.ops.gpu_check", "--capture-to", str(out),
                        "--arch", *map(str, archs), "--op", *ops], env=env, check=True)
        return [Launch(**item) for item in json.loads(out.read_text())]


# ---- compile (runs without the interpreter) ----------------------------------------------------


class _Pointer:
    """A tensor argument for Triton's binder: a dtype and an address (aligned or not)."""

    def __init__(self, dtype, aligned: bool):
        self.dtype = dtype
        self._ptr = 0 if aligned else 8

    def data_ptr(self) -> int:
        return self._ptr


def _decode(value):
    import torch

    if isinstance(value, dict) and "tensor" in value:
        return _Pointer(getattr(torch, value["tensor"]), value["aligned"])
    if isinstance(value, dict) and "dtype" in value:
        return getattr(torch, value["dtype"])
    return value


def _jit_function(module: str, name: str):
    fn = getattr(importlib.import_module(module), name)
    while not hasattr(fn, "_pack_args"):  # autotuner / heuristics wrappers hold the JITFunction
        fn = fn.fn
    return fn


def _cuobjdump() -> str:
    import triton

    path = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
    if not path.exists():
        raise FileNotFoundError(f"gpu_check: the triton wheel has no cuobjdump at {path}")
    return str(path)


def _config_text(kwargs: dict, metadata) -> str:
    blocks = " ".join(f"{k}={v}" for k, v in sorted(kwargs.items()) if k.isupper())
    return f"{blocks} w{metadata.num_warps} s{metadata.num_stages}".strip()


def compile_launch(launch: Launch) -> Row:
    """AOT-compile one recorded launch for its arch and read its resources from the cubin."""
    from triton import compile as triton_compile
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource, make_backend
    from triton.runtime.jit import create_function_from_signature

    row = Row(kernel=launch.name, op=launch.op, dtype=launch.dtype, case=launch.case,
              arch=launch.arch, module=launch.module)
    try:
        fn = _jit_function(launch.module, launch.name)
        target = GPUTarget("cuda", launch.arch, 32)
        backend = make_backend(target)
        binder = create_function_from_signature(fn.signature, fn.params, backend)
        args = [_decode(a) for a in launch.args]
        kwargs = {k: _decode(v) for k, v in launch.kwargs.items()}
        bound, specialization, options = binder(*args, **kwargs)
        options, signature, constexprs, attrs = fn._pack_args(backend, kwargs, bound,
                                                              specialization, options)
        kernel = triton_compile(ASTSource(fn, signature, constexprs, attrs), target=target,
                                options=options.__dict__)
        with tempfile.NamedTemporaryFile(suffix=".cubin") as cubin:
            cubin.write(kernel.asm["cubin"])
            cubin.flush()
            dump = subprocess.run([_cuobjdump(), "--dump-resource-usage", cubin.name],
                                  capture_output=True, text=True, check=True).stdout
        usage = parse_resource_usage(dump)
        registers, stack, static_shared = usage[kernel.metadata.name]
        row.registers, row.stack = registers, stack
        row.shared = static_shared + kernel.metadata.shared
        row.config = _config_text(launch.kwargs, kernel.metadata)
    except Exception as error:  # reported as a failing row: the gate lists every failure
        row.error = f"{type(error).__name__}: {str(error).strip().splitlines()[-1:]}"
    return row


def compile_all(launches: list[Launch], jobs: int) -> list[Row]:
    """:func:`compile_launch` for each distinct launch, ``jobs`` processes at a time."""
    unique = list({launch.key(): launch for launch in launches}.values())
    if jobs <= 1:
        return [compile_launch(launch) for launch in unique]
    with ProcessPoolExecutor(jobs) as pool:
        return list(pool.map(compile_launch, unique))


# ---- report ------------------------------------------------------------------------------------

COLUMNS = ("kernel", "case", "dtype", "arch", "config", "registers", "stack", "shared KB",
           "verdict")


def table(rows: list[Row]) -> str:
    """Markdown table of ``rows`` (one line per launch and arch) with each row's verdict."""
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + "---|" * len(COLUMNS)]
    for row in sorted(rows, key=lambda r: (r.op, r.kernel, r.dtype, r.case, r.arch)):
        verdict = "; ".join(failures(row)) or "ok"
        cells = (row.kernel, row.case, row.dtype, f"sm_{row.arch}", row.config,
                 row.registers, row.stack, f"{row.shared / KB:.1f}", verdict)
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)


def summary(rows: list[Row]) -> str:
    """Per op and dtype, one column per arch: max registers / max stack bytes / max shared KB
    over its launches, and how many of them fail (the README's table)."""
    archs = sorted({row.arch for row in rows})
    groups: dict[tuple[str, str], list[Row]] = {}
    for row in rows:
        groups.setdefault((row.op, row.dtype), []).append(row)
    lines = ["| op | dtype | launches | " + " | ".join(f"sm_{a}" for a in archs) + " |",
             "|---|---|---|" + "---|" * len(archs)]
    for (op, dtype), group in sorted(groups.items()):
        cells = []
        for arch in archs:
            here = [r for r in group if r.arch == arch]
            built = [r for r in here if not r.error]
            failing = sum(bool(failures(r)) for r in here)
            cell = (f"{max(r.registers for r in built)} / {max(r.stack for r in built)} / "
                    f"{max(r.shared for r in built) / KB:.0f}" if built else "-")
            cells.append(cell + (f" ({failing} fail)" if failing else ""))
        launches = len(group) // max(1, len(archs))
        lines.append(f"| {op} | {dtype} | {launches} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m drpose.ops.gpu_check",
                                     description=__doc__.splitlines()[0])
    parser.add_argument("--arch", type=int, nargs="+", default=list(ARCHS), choices=ARCHS)
    parser.add_argument("--op", nargs="+", default=list(CASES), choices=list(CASES),
                        help="the ops to check (default all)")
    parser.add_argument("--jobs", type=int, default=2, help="compile processes (default 2)")
    parser.add_argument("--json", type=Path, help="also write the rows to this JSON file")
    parser.add_argument("--capture-to", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.capture_to:
        launches = capture(tuple(args.arch), tuple(args.op))
        args.capture_to.write_text(json.dumps([asdict(launch) for launch in launches]))
        return 0
    os.environ.setdefault("TRITON_CACHE_DIR", str((CACHE_DIR / "triton").resolve()))
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")  # Triton 3.9's default, stated
    start = time.perf_counter()
    launches = capture_in_child(tuple(args.arch), tuple(args.op))
    captured = time.perf_counter()
    rows = compile_all(launches, args.jobs)
    done = time.perf_counter()
    import triton

    print(table(rows))
    print()
    print(summary(rows))
    bad = [row for row in rows if failures(row)]
    print(f"\ntriton {triton.__version__}: {len(launches)} launches recorded in "
          f"{captured - start:.0f} s, {len(rows)} distinct compiled in {done - captured:.0f} s; "
          f"{len(bad)} fail the gate")
    if args.json:
        args.json.write_text(json.dumps([asdict(row) for row in rows], indent=1))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
