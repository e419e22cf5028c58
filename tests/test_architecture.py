"""The layout's promises: the core and the outputs import neither TensorFlow nor Keras (nor JAX)."""

from __future__ import annotations

import pkgutil
import subprocess
import sys
from pathlib import Path

import pytest

import gradviz

ROOT = Path(__file__).resolve().parents[1]

#: packages that must work on a machine without any deep-learning framework
FRAMEWORK_FREE = ("gradviz.core", "gradviz.output")


def _modules(package: str) -> list[str]:
    module = __import__(package, fromlist=["_"])
    return [package] + [f"{package}.{m.name}" for m in pkgutil.iter_modules(module.__path__)]


@pytest.mark.parametrize("module", [m for p in FRAMEWORK_FREE for m in _modules(p)])
def test_core_and_output_import_no_framework(module: str) -> None:
    """Import the module in a fresh interpreter where importing tensorflow, keras or jax fails."""
    prelude = (
        "import sys\n"
        "class Block:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in ('tensorflow', 'keras', 'jax', 'tf_keras'):\n"
        "            raise ImportError('blocked: ' + name)\n"
        "sys.meta_path.insert(0, Block())\n"
        f"import {module}\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", prelude], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "ok"


def test_version_has_one_source() -> None:
    """setup.cfg reads the version from the package; no second copy of the number."""
    setup = (ROOT / "setup.cfg").read_text()
    assert "version = attr: gradviz.__version__" in setup
    assert gradviz.__version__.count(".") == 2


def test_public_names_resolve() -> None:
    """Every name gradviz lists in __all__ is reachable from the package."""
    for name in gradviz.__all__:
        assert getattr(gradviz, name) is not None
