"""Build of the ``drpose._C`` extension from ``csrc/``.

C++ (OpenMP) sources are always compiled. CUDA sources (``csrc/*.cu``) are compiled only when
:func:`build_cuda` says so: torch is a CUDA build and a CUDA toolkit is found, unless
``DRPOSE_BUILD_CUDA=0|1`` overrides. ``DRPOSE_NATIVE=0`` turns off ``-march=native``.
``pip install -e . --no-build-isolation`` runs this.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"


def build_cuda() -> bool:
    """The one place that decides whether CUDA sources are compiled."""
    override = os.environ.get("DRPOSE_BUILD_CUDA")
    if override is not None:
        if override not in ("0", "1"):
            sys.exit(f"DRPOSE_BUILD_CUDA must be 0 or 1, got {override!r}")
        return override == "1"
    import torch
    from torch.utils.cpp_extension import CUDA_HOME

    return torch.version.cuda is not None and CUDA_HOME is not None


def extensions() -> list:
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cpp"))
    openmp = ["-fopenmp"] if platform.system() == "Linux" else []
    # The extension is compiled on the machine that runs it, so by default it uses that CPU's
    # vector units; DRPOSE_NATIVE=0 builds a portable binary (e.g. for a shared cluster image).
    native = ["-march=native"] if os.environ.get("DRPOSE_NATIVE", "1") == "1" else []
    cxx = ["-O3", "-std=c++17", *native, *openmp]
    if not build_cuda():
        return [CppExtension("drpose._C", sources, extra_compile_args={"cxx": cxx},
                             extra_link_args=openmp)]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;8.6;8.9;9.0")
    sources += sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cu"))
    return [CUDAExtension("drpose._C", sources,
                          define_macros=[("DRPOSE_WITH_CUDA", None)],
                          extra_compile_args={"cxx": cxx, "nvcc": ["-O3", "--use_fast_math"]},
                          extra_link_args=openmp)]


def main() -> None:
    from torch.utils.cpp_extension import BuildExtension

    setup(
        packages=find_packages(include=["drpose", "drpose.*", "drpose_kernels"]),
        package_data={"drpose": ["motion/assets/*"]},
        ext_modules=extensions(),
        cmdclass={"build_ext": BuildExtension},
    )


if __name__ == "__main__":
    main()
