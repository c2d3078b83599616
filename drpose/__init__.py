"""drpose: direct reward fine-tuning of multi-view human diffusion models with PoseScore.

Importing this package never compiles anything. The compiled kernels live in ``drpose._C``
(built by ``pip install -e . --no-build-isolation``); when it is missing, the ops fall back to
their torch references with one warning (see :mod:`drpose._extension`).
"""

__version__ = "0.1.0"
