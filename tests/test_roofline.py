"""bench/roofline.py: the README's roofline table is the script's output, and its arithmetic."""

import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _roofline():
    spec = importlib.util.spec_from_file_location("roofline", ROOT / "bench" / "roofline.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("roofline", module)  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_readme_carries_the_derived_table():
    assert _roofline().markdown() in (ROOT / "README.md").read_text()


def test_time_is_the_larger_of_compute_and_memory():
    roofline = _roofline()
    fused = roofline.heatmap_rows()[0]  # forward, 96²: one fp32 read of 276 maps
    assert fused.bytes == 4 * 276 * 96 * 96
    t, bound = fused.time(roofline.H100)
    assert bound == "memory" and t == fused.bytes / 3.35e12
    big = roofline.Row("x", "", "", 1e15, 1.0, "bf16")
    assert big.time(roofline.H200) == (1e15 / 989e12, "compute")
