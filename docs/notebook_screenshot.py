"""Screenshot of the tour notebook's inline report, as a notebook user sees it: docs/notebook_report.png.

Runs samples/tour.ipynb with nbclient (an ipykernel on this Python, importing this
checkout), puts the cells from the model to the inline report, with their outputs, on a page styled
like a notebook, and has headless Chromium take the picture. Needs ``chromium`` (Debian:
``apt-get install chromium``) and Graphviz's ``dot``.

    python docs/notebook_screenshot.py [OUT.png]
"""

from __future__ import annotations

import html
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import nbclient
import nbformat

ROOT = Path(__file__).resolve().parents[1]
PAGE_CSS = """
body { margin: 0; background: #fff; font-family: system-ui, -apple-system, "Segoe UI", Roboto, Arial, sans-serif; }
.cell { display: flex; margin: 10px 16px; }
.prompt { width: 70px; flex: none; color: #303F9F; font: 13px/1.4 "Liberation Mono", monospace; padding-top: 6px; }
.prompt.out { color: #D84315; }
.input { flex: 1; background: #f7f7f7; border: 1px solid #e0e0e0; border-radius: 2px; padding: 6px 10px;
         font: 13px/1.4 "Liberation Mono", monospace; white-space: pre; }
.output { flex: 1; padding: 4px 0; }
"""


def execute(path: Path) -> nbformat.NotebookNode:
    """The notebook at ``path`` after running it top to bottom."""
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "kernels" / "gradviz-docs"
        spec.mkdir(parents=True)
        (spec / "kernel.json").write_text(json.dumps({
            "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "gradviz docs", "language": "python",
            "env": {"PYTHONPATH": str(ROOT), "TF_CPP_MIN_LOG_LEVEL": "3"},
        }))
        os.environ["JUPYTER_PATH"] = tmp
        notebook = nbformat.read(path, as_version=4)
        nbclient.NotebookClient(notebook, kernel_name="gradviz-docs", timeout=300,
                                resources={"metadata": {"path": str(ROOT)}}).execute()
    return notebook


def page(notebook: nbformat.NotebookNode, first: int, last_source: str) -> str:
    """Code cells ``first`` (0-based) up to the one whose source is ``last_source``, as a notebook shows them."""
    parts = [f"<!DOCTYPE html><html><head><meta charset='utf-8'><style>{PAGE_CSS}</style></head><body>"]
    for cell in [c for c in notebook.cells if c.cell_type == "code"][first:]:
        count = cell.execution_count
        parts.append(f'<div class="cell"><div class="prompt">In&nbsp;[{count}]:</div>'
                     f'<div class="input">{html.escape(cell.source)}</div></div>')
        for output in cell.outputs:
            data = output.get("data", {})
            if "text/html" in data:
                parts.append(f'<div class="cell"><div class="prompt out">Out[{count}]:</div>'
                             f'<div class="output">{data["text/html"]}</div></div>')
        if cell.source == last_source:
            break
    parts.append("</body></html>")
    return "\n".join(parts)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "notebook_report.png"
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        sys.exit("chromium is not installed (Debian: apt-get install chromium)")
    notebook = execute(ROOT / "samples" / "tour.ipynb")
    with tempfile.TemporaryDirectory() as tmp:
        target = Path(tmp) / "cell.html"
        target.write_text(page(notebook, 1, 'report = gradviz.analyze(model, batches=2)\nreport'), encoding="utf-8")
        subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                        "--no-first-run", "--hide-scrollbars", f"--screenshot={out.resolve()}",
                        "--window-size=1100,1400", target.as_uri()],
                       check=True, capture_output=True, timeout=120)
    print(f"wrote {out}", file=sys.stderr)


if __name__ == "__main__":
    main()
