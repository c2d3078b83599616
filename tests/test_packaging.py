"""What ``pip install .`` builds: portable flags, torch pinned to the release it was built
against, every package (data folders included), an extension that imports on its own."""

from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def setup_kwargs(monkeypatch):
    """The keyword arguments setup.py passes to setuptools.setup (nothing is built)."""
    monkeypatch.delenv("DRPOSE_NATIVE", raising=False)
    monkeypatch.setenv("DRPOSE_BUILD_CUDA", "0")
    spec = importlib.util.spec_from_file_location("drpose_setup", ROOT / "setup.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    captured = {}
    monkeypatch.setattr(module, "setup", lambda **kwargs: captured.update(kwargs))
    module.main()
    return captured


def test_compile_flags_are_portable(setup_kwargs):
    (extension,) = setup_kwargs["ext_modules"]
    cxx = extension.extra_compile_args["cxx"]
    assert "-march=native" not in cxx and "-g0" in cxx
    assert not any(flag.startswith("-std=") for flag in cxx)  # torch's own standard


def test_torch_is_pinned_to_the_build_release(setup_kwargs):
    release = torch.__version__.split("+")[0]
    assert f"torch=={release}" in setup_kwargs["install_requires"]
    pyproject = (ROOT / "pyproject.toml").read_text()
    build_system = pyproject.split("[build-system]")[1].split("\n[")[0]
    assert f'"torch=={release}"' in build_system
    assert any(r.startswith("tensorboard") for r in setup_kwargs["install_requires"])


def test_every_package_is_listed(setup_kwargs):
    packages = set(setup_kwargs["packages"])
    assert {"drpose.motion", "drpose.motion.assets", "drpose.train.presets",
            "drpose_kernels"} <= packages
    assert setup_kwargs["package_data"] == {"drpose.motion.assets": ["*"],
                                            "drpose.train.presets": ["*.json"]}


def test_extension_imports_without_torch_first():
    pytest.importorskip("drpose._C")
    code = "import sys; import drpose._C; print('torch' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
