"""stderr carries exactly the documented lines when it is not a terminal (logs, pipes, CI)."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import robust_models as rm


def test_stderr_is_exactly_the_documented_lines_without_a_terminal(tmp_path: Path,
                                                                   sample_path: Callable[[str], Path]) -> None:
    """No blank line left by a progress bar before ``wrote ...`` and ``Error: ...`` (stderr is a pipe here)."""
    target = tmp_path / "r.json"
    proc = rm.run_gradviz("inspect", sample_path("dead_head"), "--batches", "3", "--batch-size", "4",
                          "-o", target, "--fail-on", "error", cwd=tmp_path, timeout=300)
    assert proc.returncode == 1
    lines = proc.stderr.split("\n")
    assert lines[0] == f"wrote {target}" and lines[1].startswith("Error: ") and lines[2:] == [""], proc.stderr
