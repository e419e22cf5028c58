"""The README stays true: its Python snippets run as written, its listed keys are the report's.

Each ```python block runs in a fresh interpreter (a subprocess), in a temporary
directory holding a copy of ``samples/``, as a new user would paste it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"


def python_blocks(text: str) -> list[tuple[int, str]]:
    """Every ```python block of a Markdown text, with the line it starts on.

    Example:
        >>> python_blocks("a\\n```python\\nx = 1\\n```\\n```sh\\nls\\n```\\n")
        [(2, 'x = 1\\n')]
    """
    blocks = []
    for match in re.finditer(r"^```python\n(.*?)^```$", text, flags=re.S | re.M):
        blocks.append((text.count("\n", 0, match.start()) + 1, match.group(1)))
    return blocks


#: blocks that are files for the CLI (first line ``# NAME.py``), not snippets to paste: the test that runs
#: each one verbatim, with the files it reads
FILE_BLOCKS = {"# steps.py": "tests/test_loss_terms.py::test_gan_generator_terms_as_in_the_readme"}
BLOCKS = [(line, code) for line, code in python_blocks(README.read_text()) if code.split("\n", 1)[0] not in FILE_BLOCKS]


def test_file_blocks_are_run_by_their_tests() -> None:
    """Each file block is named in FILE_BLOCKS, and the test named there reads it from the README."""
    for line, code in python_blocks(README.read_text()):
        first = code.split("\n", 1)[0]
        if re.fullmatch(r"# \w+\.py", first):
            assert first in FILE_BLOCKS, f"README.md line {line}: file block {first!r} has no test"
    for first, test in FILE_BLOCKS.items():
        path, name = test.split("::")
        source = (ROOT / path).read_text()
        assert f"def {name}(" in source and f"_readme_block(\"{first}\")" in source, test


def test_the_readme_has_python_snippets() -> None:
    assert len(BLOCKS) >= 3


@pytest.mark.parametrize(
    "line, code",
    [pytest.param(line, code, marks=[pytest.mark.dot] if "svg" in code else [], id=f"README.md:{line}")
     for line, code in BLOCKS],
)
def test_readme_snippet_runs_in_a_fresh_interpreter(line: int, code: str, tmp_path: Path) -> None:
    shutil.copytree(ROOT / "samples", tmp_path / "samples", ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"}
    proc = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, f"README.md line {line}:\n{code}\n{proc.stderr[-3000:]}"


def _readme_meta_keys() -> list[str]:
    """The keys the README's JSON section lists for ``meta``: "* `meta`: `{a, b, ...}`"."""
    match = re.search(r"^\* `meta`: `\{([^}]*)\}`", README.read_text(), flags=re.M)
    assert match, "README's JSON section no longer lists meta's keys as * `meta`: `{...}`"
    return [key.strip() for key in match.group(1).split(",")]


def test_readme_lists_the_meta_keys_of_a_real_report(build_sample: Any) -> None:
    import gradviz

    report = gradviz.analyze(build_sample("shared_trunk"), batch_size=4)
    assert _readme_meta_keys() == list(report.meta)


@pytest.mark.slow
def test_readme_compact_box_count_is_the_benchmark_resnets() -> None:
    """'A ResNet50 trunk with three heads (resnet50_3 ...) drops from N boxes to M' (loss boxes included)."""
    import importlib.util

    import gradviz
    from gradviz.output.diagram import RenderOptions, build_dot
    match = re.search(r"\(`resnet50_3` in `benchmarks/models.py`\) drops from (\d+) boxes to (\d+)", README.read_text())
    assert match, "README no longer states the compact box count of resnet50_3"
    spec = importlib.util.spec_from_file_location("gradviz_bench_models", ROOT / "benchmarks" / "models.py")
    assert spec and spec.loader
    models = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = models  # its dataclass looks its module up there
    spec.loader.exec_module(models)
    report = gradviz.analyze(models.resnet50_3(), batch_size=1)

    def boxes(dot: str) -> int:
        return len(re.findall(r'^\s+"[^"]+" \[', dot, flags=re.M))

    assert (boxes(build_dot(report)), boxes(build_dot(report, RenderOptions(compact=True)))) == \
        (int(match.group(1)), int(match.group(2)))
