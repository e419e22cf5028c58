"""Start-up cost and devices: ``gradviz --help`` needs no TensorFlow; nothing pins the CPU."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

_CHECK = """
import sys
from gradviz.cli import main
for args in (['--help'], ['inspect', '--help']):
    try:
        main(args)
    except SystemExit:
        pass
loaded = [m for m in sys.modules if m.split('.')[0] in ('tensorflow', 'keras')]
print('LOADED:' + ','.join(sorted(loaded)[:5]))
"""


def test_help_imports_no_tensorflow() -> None:
    proc = subprocess.run([sys.executable, "-c", _CHECK], capture_output=True, text=True, timeout=120,
                          env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stderr
    assert "Usage:" in proc.stdout
    assert proc.stdout.strip().splitlines()[-1] == "LOADED:"


def test_nothing_forces_the_cpu() -> None:
    """Where a GPU is present TensorFlow uses it: gradviz never hides devices or pins ops to the CPU."""
    pattern = re.compile(r"CUDA_VISIBLE_DEVICES|tf\.device\(|set_visible_devices|['\"]/?(device:)?CPU(:0)?['\"]")
    offenders = [str(p.relative_to(ROOT)) for p in sorted((ROOT / "gradviz").glob("*.py"))
                 if pattern.search(p.read_text())]
    assert offenders == []
