"""Progress while batches stream: the callback, and the bar ``progress="auto"`` picks for where it runs."""

from __future__ import annotations

import json
import os
import pty
import subprocess
import sys
import tempfile
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tensorflow as tf

import gradviz
import robust_models as rm
from gradviz.output import progress as progress_mod


@pytest.fixture(scope="module")
def session() -> Any:
    return gradviz.prepare(rm.two_heads())


def _dataset(batches: int) -> tf.data.Dataset:
    rows = 4 * batches
    x = np.zeros((rows, 3), "float32")
    return tf.data.Dataset.from_tensor_slices((x, (np.zeros((rows, 1), "float32"), np.ones((rows, 1), "float32"))))


def test_callback_sees_every_batch_of_fit_style_data(session: Any) -> None:
    seen: list[tuple[int, int]] = []
    session.run(x=_dataset(3).batch(4), progress=lambda done, total: seen.append((done, total)))
    assert seen == [(1, 3), (2, 3), (3, 3)]


def test_auto_shows_nothing_where_stderr_is_no_terminal(session: Any, capsys: pytest.CaptureFixture[str]) -> None:
    assert progress_mod.environment() == "none"  # pytest captures stderr
    session.run(x=_dataset(3).batch(4))
    assert capsys.readouterr().err == ""


def test_auto_uses_tqdm_auto_in_a_notebook(session: Any, monkeypatch: pytest.MonkeyPatch,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    """In a kernel, tqdm.auto's bar (its text form here, where ipywidgets' widget cannot show)."""
    monkeypatch.setattr(progress_mod, "in_notebook", lambda: True)
    created: list[Any] = []
    real = progress_mod._notebook_bar

    def recording(total: int, label: str) -> Any:
        created.append(real(total, label))
        return created[-1]

    monkeypatch.setattr(progress_mod, "_notebook_bar", recording)
    session.run(x=_dataset(3).batch(4))
    (bar,) = created
    from tqdm.auto import tqdm

    assert isinstance(bar, tqdm) and bar.total == 3 and bar.n == 3
    assert "gradients" in capsys.readouterr().err  # tqdm's text bar (it redraws at most every 0.1 s)


def test_one_batch_shows_no_bar(monkeypatch: pytest.MonkeyPatch) -> None:
    with progress_mod.progress_bar(1, "terminal") as callback:
        assert callback is None
    with progress_mod.progress_bar(3, "terminal") as callback:
        assert callback is not None
        for done in range(1, 4):
            callback(done, 3)


def test_in_notebook_means_a_jupyter_kernel(monkeypatch: pytest.MonkeyPatch) -> None:
    zmqshell = types.ModuleType("ipykernel.zmqshell")

    class ZMQInteractiveShell:
        pass

    class TerminalInteractiveShell:
        pass

    zmqshell.ZMQInteractiveShell = ZMQInteractiveShell  # type: ignore[attr-defined]
    ipython = types.ModuleType("IPython")
    monkeypatch.setitem(sys.modules, "ipykernel.zmqshell", zmqshell)
    monkeypatch.setitem(sys.modules, "IPython", ipython)
    for shell, expected in [(ZMQInteractiveShell(), True), (TerminalInteractiveShell(), False), (None, False)]:
        ipython.get_ipython = lambda shell=shell: shell  # type: ignore[attr-defined]
        assert progress_mod.in_notebook() is expected
    monkeypatch.delitem(sys.modules, "ipykernel.zmqshell")
    assert progress_mod.in_notebook() is False


def test_cli_bar_on_a_terminal_stderr_only(tmp_path: Path) -> None:
    """The real executable: a rich bar when stderr is a terminal, nothing on stdout (the JSON).

    (Without a terminal there is none: see test_auto_shows_nothing_where_stderr_is_no_terminal, and the
    CLI tests, whose stderr is checked line by line.)
    """
    model = rm.save(rm.two_heads(), tmp_path / "m.keras")
    args = ["inspect", str(model), "--batches", "3", "--batch-size", "4", "--json"]
    main, replica = pty.openpty()
    env = dict(os.environ, PYTHONPATH=str(rm.ROOT), COLUMNS="100")
    exe = str(rm.GRADVIZ_EXE) if rm.GRADVIZ_EXE.exists() else "gradviz"
    with tempfile.TemporaryFile() as stdout:
        process = subprocess.Popen([exe, *args], stdout=stdout, stderr=replica, env=env)
        os.close(replica)
        chunks = []
        while True:  # read while it runs: a full terminal buffer would block the bar
            try:
                chunk = os.read(main, 65536)
            except OSError:  # the terminal closed with the process
                break
            if not chunk:
                break
            chunks.append(chunk)
        os.close(main)
        assert process.wait(timeout=180) == 0, b"".join(chunks)
        stdout.seek(0)
        report = json.loads(stdout.read())
    terminal = b"".join(chunks).decode(errors="replace")
    assert "gradients" in terminal and "3/3" in terminal
    assert report["meta"]["batches"] == 3
