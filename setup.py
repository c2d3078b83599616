"""Build of the ``drpose._C`` extension from ``csrc/``.

C++ (OpenMP) sources are always compiled. CUDA sources (``csrc/*.cu``) are compiled only when
:func:`build_cuda` says so: torch is a CUDA build and a CUDA toolkit is found, unless
``DRPOSE_BUILD_CUDA=0|1`` overrides. The binary is portable (no ``-march=native``, no debug
info; on x86 the heatmap loss's map loop is also compiled for AVX2 + FMA and picked at run time)
unless ``DRPOSE_NATIVE=1`` asks for this CPU's vector units.
The C++ standard is the one the building torch asks for (torch's own ``-std`` flag). The wheel
requires exactly the torch release it was compiled against (:func:`torch_requirement`): an
extension built against another torch does not load. ``pip install -e . --no-build-isolation``
runs this with the torch already installed; plain ``pip install .`` builds in isolation against
the torch pinned in ``pyproject.toml``'s ``[build-system]``.
"""

from __future__ import annotations

import os
import platform
import sys
from pathlib import Path

from setuptools import find_packages, setup

ROOT = Path(__file__).parent
CSRC = ROOT / "csrc"

# Runtime dependencies besides torch (torch_requirement pins torch).
DEPENDENCIES = [
    "triton>=3.0; platform_system == 'Linux'",
    "numpy>=1.24",
    "diffusers>=0.30",
    "transformers>=4.40",
    "accelerate>=0.30",
    "peft>=0.12",
    "safetensors>=0.4",
    "smplx>=0.1.28",
    "PyMCubes>=0.1.4",
    "fast-simplification>=0.1.7",
    "pymeshlab>=2023.12",  # drpose.recon: isotropic remeshing, screened Poisson
    "trimesh>=4.0",
    "rtree>=1.0",
    "scipy>=1.10",
    "threadpoolctl>=3.1",  # the stand-in SMPL-X file: one BLAS thread, the same bytes everywhere
    "pillow>=10.0",
    "tqdm>=4.60",
    "matplotlib>=3.7",
    "pygltflib>=1.16",
    "pycollada>=0.8",  # drpose.data.scans: Collada (.dae/.zae) meshes
    "tensorboard>=2.14",  # the run folder's tensorboard/ logs (drpose.train.engine)
]


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


def torch_requirement() -> str:
    """``torch==X.Y.Z``: the release of the torch building this (local labels such as ``+cu126``
    dropped, so any build of that release satisfies it)."""
    import torch

    return f"torch=={torch.__version__.split('+')[0]}"


def extensions() -> list:
    from torch.utils.cpp_extension import CppExtension, CUDAExtension

    sources = sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cpp"))
    openmp = ["-fopenmp"] if platform.system() == "Linux" else []
    # Portable by default (a wheel runs on other CPUs); DRPOSE_NATIVE=1 for this CPU only.
    native = ["-march=native"] if os.environ.get("DRPOSE_NATIVE", "0") == "1" else []
    # -g0: Python's CFLAGS carry -g. -fno-trapping-math: no code here relies on floating-point
    # traps, and without it GCC may not if-convert a pixel loop whose branches it cannot compute
    # speculatively (pose_heatmap_loss's bce loop then stays scalar: 5x slower with SSE2, 9x
    # with AVX2); it changes no value.
    cxx = ["-O3", "-g0", "-fno-trapping-math", *native, *openmp]
    link = [*openmp, *torch_rpath()]
    if not build_cuda():
        return [CppExtension("drpose._C", sources, extra_compile_args={"cxx": cxx},
                             extra_link_args=link)]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;8.6;8.9;9.0")
    sources += sorted(str(p.relative_to(ROOT)) for p in CSRC.glob("*.cu"))
    # No --use_fast_math: the CUDA kernels must compute what the CPU kernels compute from the
    # shared csrc/*_math.h (IEEE division, no flush to zero); those headers choose their own
    # fast paths.
    return [CUDAExtension("drpose._C", sources,
                          include_dirs=cuda_wheel_include_dirs(),
                          define_macros=[("DRPOSE_WITH_CUDA", None)],
                          extra_compile_args={"cxx": cxx, "nvcc": ["-O3"]},
                          extra_link_args=link)]


def cuda_wheel_include_dirs() -> list[str]:
    """Header folders of the NVIDIA pip wheels torch depends on (``nvidia/*/include``, e.g.
    cusparse.h, cublas_v2.h): torch's CUDA headers include them, and a CUDA toolkit with only the
    compiler and runtime (as /usr/local/cuda may be) lacks them."""
    import torch

    nvidia = Path(torch.__file__).parent.parent / "nvidia"
    return sorted(str(d) for d in nvidia.glob("*/include") if (d / "cusparse.h").exists())


def torch_rpath() -> list[str]:
    """Linker flags that let ``import drpose._C`` find torch's libraries (libc10, libtorch)
    without ``import torch`` first: torch beside drpose in site-packages (``$ORIGIN/../torch/lib``,
    an installed wheel) or where the building torch lives (an in-place or editable build)."""
    if platform.system() != "Linux":
        return []
    from torch.utils.cpp_extension import library_paths

    return [f"-Wl,-rpath,$ORIGIN/../torch/lib:{':'.join(library_paths())}"]


def main() -> None:
    from torch.utils.cpp_extension import BuildExtension

    setup(
        packages=[*find_packages(include=["drpose", "drpose.*", "drpose_kernels"]),
                  "drpose.motion.assets", "drpose.train.presets"],
        package_data={"drpose.motion.assets": ["*"], "drpose.train.presets": ["*.json"]},
        install_requires=[torch_requirement(), *DEPENDENCIES],
        ext_modules=extensions(),
        cmdclass={"build_ext": BuildExtension},
    )


if __name__ == "__main__":
    main()
