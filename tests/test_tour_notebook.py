"""samples/tour.ipynb ships without outputs and runs top to bottom in a real kernel."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOUR = ROOT / "samples" / "tour.ipynb"
KERNEL = "gradviz-tour-test"


def test_committed_notebook_has_no_outputs() -> None:
    notebook = json.loads(TOUR.read_text(encoding="utf-8"))
    code = [c for c in notebook["cells"] if c["cell_type"] == "code"]
    assert code
    for cell in code:
        assert cell["outputs"] == [] and cell["execution_count"] is None, "strip the outputs before committing"


def run_tour(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Execute the tour with nbclient in an ipykernel on this Python, importing this checkout's gradviz."""
    nbformat = pytest.importorskip("nbformat")
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    spec = tmp_path / "jupyter" / "kernels" / KERNEL
    spec.mkdir(parents=True)
    (spec / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "gradviz test", "language": "python",
        "env": {"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
    }))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path / "jupyter"))
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path / "runtime"))
    monkeypatch.setenv("JUPYTER_PLATFORM_DIRS", "1")
    notebook = nbformat.read(TOUR, as_version=4)
    client = nbclient.NotebookClient(notebook, kernel_name=KERNEL, timeout=120, resources={"metadata": {"path": str(ROOT)}})
    client.execute()
    return notebook


def test_tour_runs_top_to_bottom(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    notebook = run_tour(tmp_path, monkeypatch)
    code = [c for c in notebook.cells if c.cell_type == "code"]
    errors = [o for c in code for o in c.outputs if o.output_type == "error"]
    assert not errors, errors
    by_source = {c.source.splitlines()[-1]: c for c in code}

    report_html = [o["data"]["text/html"] for o in by_source["report"].outputs if "text/html" in o.get("data", {})]
    assert len(report_html) == 1
    page = report_html[0]
    assert "three_heads" in page and "dead-head" in page
    for loss in ("label", "score", "flag"):
        assert f"</span>{loss}</td>" in page
    if shutil.which("dot"):
        assert "<svg" in page
    else:
        assert "apt-get install graphviz" in page

    text = by_source["repr(report)  # the text form stays one line"].outputs[0]["data"]["text/plain"]
    assert text.startswith("\"<gradviz.Report 'three_heads'") or text.startswith("'<gradviz.Report")

    printed = "".join(o.get("text", "") for c in code for o in c.outputs if o.output_type == "stream")
    assert "loss 'flag' trains nothing" in printed
    assert "score=0.1" in printed and "trunk shares" in printed

    plots = [o for o in by_source["figure"].outputs if "image/png" in o.get("data", {})]
    assert len(plots) == 1  # the Figure displays once (not attached to pyplot, so not twice)
