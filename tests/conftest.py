"""Shared fixtures: sample models, a CLI runner, the Graphviz marker."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import pytest  # noqa: E402
from click.testing import CliRunner, Result  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
SAMPLES = ROOT / "samples"
GOLDEN = Path(__file__).resolve().parent / "golden"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--regen-golden", action="store_true", help="rewrite tests/golden/* from the current output")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if shutil.which("dot") is None:
        skip = pytest.mark.skip(reason="Graphviz's dot is not installed")
        for item in items:
            if "dot" in item.keywords:
                item.add_marker(skip)


def _load_samples_module() -> Any:
    spec = importlib.util.spec_from_file_location("gradviz_samples", SAMPLES / "make_samples.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules["gradviz_samples"] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def samples_module() -> Any:
    """``samples/make_samples.py`` as a module (its builders)."""
    return _load_samples_module()


@pytest.fixture
def build_sample(samples_module: Any) -> Callable[[str], Any]:
    """Build a sample model afresh (seeded): ``build_sample("shared_trunk")``."""
    return lambda name, seed=0: samples_module.build(name, seed)


@pytest.fixture
def sample_path() -> Callable[[str], Path]:
    """Path of a committed sample file: ``sample_path("shared_trunk")``."""
    return lambda name: SAMPLES / f"{name}.keras"


@pytest.fixture
def cli() -> Callable[..., Result]:
    """Run the gradviz CLI in-process; stdout and stderr are kept apart."""
    from gradviz.cli import main

    def run(*args: str, **kwargs: Any) -> Result:
        runner = CliRunner()
        return runner.invoke(main, [str(a) for a in args], catch_exceptions=False, **kwargs)

    return run


@pytest.fixture
def regen_golden(request: pytest.FixtureRequest) -> bool:
    """Whether --regen-golden was given."""
    return bool(request.config.getoption("--regen-golden"))
