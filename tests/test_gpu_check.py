"""The GPU compile gate's parsing, decisions and launch capture (drpose.ops.gpu_check).

The compile step itself runs in ``make gpu-check``; here the decisions are checked on made-up
rows and the capture on a real (interpreted) launch.
"""

from __future__ import annotations

import pytest
import torch

from drpose.ops import gpu_check
from drpose.ops.gpu_check import KB, Row, failures, parse_resource_usage

DUMP = """
Resource usage:
 Common:
  GLOBAL:11 CONSTANT[4]:8
 Function _row_attention_fwd_kernel:
  REG:146 STACK:0 SHARED:1024 LOCAL:0 CONSTANT[0]:664 TEXTURE:0 SURFACE:0 SAMPLER:0
 Function _other_kernel:
  REG:255 STACK:152 SHARED:0 LOCAL:0 CONSTANT[0]:600 TEXTURE:0 SURFACE:0 SAMPLER:0
"""

ATTENTION = "drpose_kernels.row_attention"
HEATMAP = "drpose_kernels.pose_heatmap_loss"


def row(**fields) -> Row:
    base = dict(kernel="k", op="op", dtype="float16", case="c", arch=90, registers=100, stack=0,
                shared=10 * KB, module=ATTENTION)
    return Row(**{**base, **fields})


def test_parse_resource_usage_reads_every_function():
    assert parse_resource_usage(DUMP) == {"_row_attention_fwd_kernel": (146, 0, 1024),
                                          "_other_kernel": (255, 152, 0)}


def test_a_clean_row_passes():
    assert failures(row()) == []


@pytest.mark.parametrize("arch, limit_kb", [(80, 163), (86, 99), (89, 99), (90, 227)])
def test_shared_memory_over_the_arch_limit_fails(arch, limit_kb):
    assert failures(row(arch=arch, shared=limit_kb * KB)) == []
    (reason,) = failures(row(arch=arch, shared=limit_kb * KB + 1))
    assert f"sm_{arch} allows {limit_kb} KB" in reason


@pytest.mark.parametrize("dtype", ["float16", "bfloat16"])
def test_a_spill_in_16_bit_fails(dtype):
    (reason,) = failures(row(dtype=dtype, stack=8))
    assert "spills 8 bytes" in reason


def test_fp32_spills_are_allowed_only_for_attention():
    assert failures(row(dtype="float32", stack=64)) == []
    assert failures(row(dtype="float32", stack=64, module=HEATMAP))
    assert failures(row(dtype="float64", stack=64, module=HEATMAP))


def test_a_compile_error_fails_and_is_named():
    (reason,) = failures(row(error="CompilationError: out of resources"))
    assert reason.startswith("does not compile: CompilationError")


def test_capture_records_the_launches_of_a_public_op(monkeypatch):
    from drpose.ops import pose_heatmap_loss

    launches: list[gpu_check.Launch] = []
    label = dict(arch=86, op="pose_heatmap_loss", dtype="float16", case="test")
    logits = torch.randn(1, 1, 2, 8, 8, dtype=torch.float16, requires_grad=True)
    keypoints = torch.rand(1, 1, 2, 2) * 8
    with gpu_check.recording(launches, label):
        pose_heatmap_loss(logits, keypoints, backend="triton").backward()
    assert launches, "no launch recorded"
    assert {launch.module for launch in launches} == {HEATMAP}
    assert all(launch.arch == 86 and launch.dtype == "float16" for launch in launches)
    first = launches[0]
    assert first.args[0] == {"tensor": "float16", "aligned": True}
    assert all(k.isupper() or k.startswith("num_") for k in first.kwargs)


def test_the_table_marks_failures():
    text = gpu_check.table([row(), row(kernel="bad", stack=4)])
    lines = text.splitlines()
    assert len(lines) == 4
    assert lines[2].endswith("| ok |") or lines[3].endswith("| ok |")
    assert any("spills 4 bytes" in line for line in lines)
