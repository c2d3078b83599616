"""Where the tests find PSHuman's reference data: a copy of ``shared/reference`` (layout data
reconstructed from PSHuman's public code: configs, parameter listings, cameras, scheduler) kept
in ``tests/data/pshuman`` so the suite runs from any checkout."""

from pathlib import Path

REFERENCE = Path(__file__).parent / "data" / "pshuman"
