"""The Keras callback: watch each loss's gradient flow while the model trains.

:class:`GradientFlowMonitor` prepares one :class:`~gradviz.session.Session`
for the model when training begins (the compiled losses and weights), and at
each probe runs the same analysis as ``gradviz inspect`` on a small probe with
the model's current weights. The compiled gradient pass is traced once and
reused; it reads the weights and never writes them, so training is the same
with or without the monitor.

What it writes:

* Keras's own ``logs`` at the end of a probed epoch (``History``, ``CSVLogger``,
  ``TensorBoard`` and ``EarlyStopping`` placed after it see them):
  ``gradviz/<loss>/trunk_grad_norm``, ``gradviz/<loss>/trunk_share`` and
  ``gradviz/trunk_cosine_min`` (see :func:`gradviz.core.history.log_values`);
* ``path=``: one JSON line per probe (:mod:`gradviz.core.history`);
* ``log_dir=``: TensorBoard scalars and per-loss gradient histograms per layer
  (written with TensorFlow's ``tf.summary``: on Keras's JAX backend this needs
  TensorFlow installed; everything else runs without it).

On Keras's JAX backend the probe is one compiled JAX program (through JAX's
persistent compilation cache), as ``gradviz inspect`` runs it there.

Events over time (a head died, a loss started to dominate, NaN appeared) go
into the history and are warned once each (:class:`GradientFlowWarning`). A
failure inside the monitor warns once, turns the monitor off, and training
goes on.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import IO, Any

import keras

from gradviz.backends import SUPPORTED
from gradviz.core.findings import Thresholds
from gradviz.core.history import FlowHistory, log_values, record, trunk_layers
from gradviz.errors import BackendError, MonitorError


class GradientFlowWarning(UserWarning):
    """A change in gradient flow during training (a head died, a loss dominates, NaN), or the monitor turned off."""


class GradientFlowMonitor(keras.callbacks.Callback):
    """Per-loss gradient flow on a probe during ``fit``, into Keras's logs, a history file and TensorBoard.

    Args:
        probe: what ``fit`` takes, kept small: ``(x, y)`` or ``(x, y, sample_weight)`` with NumPy
            arrays (``x``: one array, a list in input order or a dict by input name; ``y`` and
            ``sample_weight``: likewise by output), or a ``tf.data.Dataset`` or ``keras.utils.PyDataset``
            of a few such batches. It goes through the same data path as ``gradviz.analyze(x=...)``
            (:mod:`gradviz.data.probe`), and each loss applies its sample weights as Keras's
            training step does.
        every_n_epochs: probe at the end of epochs 1, 1 + n, 1 + 2n, ... (the first is always probed,
            so a ``CSVLogger`` sees the keys); None: not at epoch ends.
        every_n_steps: also probe every n training steps (history file and TensorBoard only).
        training: call the model in training mode in the probe (dropout, batch statistics);
            False for inference mode.
        path: the history file: one JSON line per probe (overwritten when training begins).
        log_dir: a TensorBoard log directory; the monitor writes to its ``gradviz`` subdirectory.
        batch_size: rows per probe batch for array probes (whole batches only); None: the whole
            probe as one batch. A dataset probe keeps its own batches.
        histograms: with ``log_dir``, also write per-loss gradient histograms per layer
            (an extra forward and K backward passes per probe).
        thresholds: when figures become findings and events (``dominated``).

    Raises:
        BackendError: Keras runs on a backend gradviz has no gradient backend for, or ``log_dir`` is
            given on JAX without TensorFlow installed (TensorBoard files are written with ``tf.summary``).
        MonitorError: ``every_n_epochs`` / ``every_n_steps`` below 1, or neither given.

    Attributes:
        records: every probe's record (the history file's lines), in order.
        events: every event so far.
        enabled: False once a failure has turned the monitor off.
        error: the failure that turned it off, if any.
    """

    def __init__(
        self,
        probe: Any,
        *,
        every_n_epochs: int | None = 1,
        every_n_steps: int | None = None,
        training: bool = True,
        path: str | Path | None = None,
        log_dir: str | Path | None = None,
        batch_size: int | None = None,
        histograms: bool = True,
        thresholds: Thresholds = Thresholds(),
    ) -> None:
        super().__init__()
        backend = keras.backend.backend()
        if backend not in SUPPORTED:
            raise BackendError(
                f"GradientFlowMonitor: Keras runs on the {backend!r} backend; gradviz supports: "
                f"{', '.join(SUPPORTED)} (set KERAS_BACKEND=tensorflow or KERAS_BACKEND=jax)"
            )
        if log_dir is not None:
            _check_summary_writer(backend)
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise MonitorError(f"{name} must be a whole number of at least 1 or None, got {value!r}")
        if every_n_epochs is None and every_n_steps is None:
            raise MonitorError("give every_n_epochs or every_n_steps (or both): the monitor would never probe")
        self.probe = probe
        self.every_n_epochs = every_n_epochs
        self.every_n_steps = every_n_steps
        self.training = training
        self.path = Path(path) if path is not None else None
        self.log_dir = Path(log_dir) if log_dir is not None else None
        self.batch_size = batch_size
        self.histograms = histograms
        self.thresholds = thresholds
        self.records: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.enabled = True
        self.error: Exception | None = None
        self.session: Any = None
        self._data: Any = None
        self._trunk: list[str] | None = None
        self._history = FlowHistory(thresholds.dominated)
        self._file: IO[str] | None = None
        self._writer: Any = None
        self._values: Any = None
        self._epochs_done = 0
        self._steps_seen = 0

    # -- Keras hooks: each one guarded, so a failure never reaches fit -----------------

    def on_train_begin(self, logs: dict[str, Any] | None = None) -> None:
        self._guarded(self._begin)

    def on_epoch_begin(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epochs_done = epoch

    def on_train_batch_end(self, batch: int, logs: dict[str, Any] | None = None) -> None:
        self._steps_seen += 1
        if self.every_n_steps and self._steps_seen % self.every_n_steps == 0:
            self._guarded(self._probe)

    def on_epoch_end(self, epoch: int, logs: dict[str, Any] | None = None) -> None:
        self._epochs_done = epoch + 1
        if self.every_n_epochs is None or epoch % self.every_n_epochs != 0:
            return
        rec = self._guarded(self._probe)
        if rec is not None and logs is not None:
            logs.update(log_values(rec))

    def on_train_end(self, logs: dict[str, Any] | None = None) -> None:
        self._close()

    # -- the work ----------------------------------------------------------------------

    def _begin(self) -> None:
        from gradviz.data.probe import probe_data
        from gradviz.session import prepare

        if self.session is None or self.session.model is not self.model:
            # compiled: the probe runs every epoch, so one trace pays off (and the histograms reuse the pass)
            self.session = prepare(self.model, training=self.training, thresholds=self.thresholds,
                                   execution="compiled")
            self._data = probe_data(self.probe, self.session.layout(), batch_size=self.batch_size)
            self._trunk = None
        if self.path is not None and self._file is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = self.path.open("w" if not self.records else "a", encoding="utf-8")
        if self.log_dir is not None and self._writer is None:
            from gradviz.backends.tensorflow.summaries import SummaryWriter

            self._writer = SummaryWriter(self.log_dir / "gradviz")
        if not self.records:
            self._probe()  # the flow before training: the baseline events compare against

    def _step(self) -> int:
        iterations = getattr(getattr(self.model, "optimizer", None), "iterations", None)
        return int(iterations.numpy()) if iterations is not None else self._steps_seen

    def _probe(self) -> dict[str, Any] | None:
        step = self._step()
        if self.records and self.records[-1]["step"] == step and self.records[-1]["epoch"] == self._epochs_done:
            return self.records[-1]  # probed at this very step already (every_n_steps)
        report = self.session.run(self._data, progress=None)  # no bar inside fit's own
        if self._trunk is None:
            self._trunk = trunk_layers(report)
        rec = record(report, self._trunk, epoch=self._epochs_done, step=step)
        events = [e.to_dict() for e in self._history.add(rec)]
        rec["events"] = events
        if self._file is not None:
            self._file.write(json.dumps(rec, allow_nan=False) + "\n")
            self._file.flush()
        if self._writer is not None:
            self._write_tensorboard(rec, report, step)
        self.records.append(rec)
        self.events.extend(events)
        for event in events:
            warnings.warn(f"gradviz: {event['message']}", GradientFlowWarning, stacklevel=3)
        return rec

    def _write_tensorboard(self, rec: dict[str, Any], report: Any, step: int) -> None:
        for key, value in log_values(rec).items():
            self._writer.scalar(key, value, step)
        if self.histograms and report.stats is not None and report.topology is not None:
            if self._values is None:
                self._values = _gradient_values(self.session.backend)
            layers = [v.layer for v in report.topology.variables]
            values = self._values.run(self._data, list(report.stats.loss_names), layers)
            for (loss, layer), g in sorted(values.items()):
                self._writer.histogram(f"gradviz/{loss}/{layer}", g, step)
        self._writer.flush()

    def _guarded(self, work: Any) -> Any:
        if not self.enabled:
            return None
        try:
            return work()
        except Exception as e:  # the monitor must never stop training
            self.enabled = False
            self.error = e
            text = " ".join(str(e).split())[:300]
            warnings.warn(
                f"gradviz: GradientFlowMonitor turned off, training goes on: {type(e).__name__}: {text}",
                GradientFlowWarning, stacklevel=3,
            )
            self._close()
            return None

    def _close(self) -> None:
        for closer in (self._file, self._writer):
            if closer is not None:
                try:
                    closer.close()
                except Exception:  # closing after a disk-full failure may fail again; nothing to save
                    pass
        self._file = None
        self._writer = None


def _check_summary_writer(backend: str) -> None:
    """TensorBoard files are written with ``tf.summary``: on JAX, TensorFlow must be installed (not imported here).

    Raises:
        BackendError: no TensorFlow to write them with.
    """
    if backend == "tensorflow":
        return
    import importlib.util

    try:
        found = importlib.util.find_spec("tensorflow") is not None
    except (ImportError, ValueError):  # a blocked or broken installation
        found = False
    if not found:
        raise BackendError(
            f"GradientFlowMonitor: `log_dir` writes TensorBoard files with TensorFlow's tf.summary, and TensorFlow "
            f"is not installed (Keras runs on {backend!r}); install it (pip install tensorflow-cpu) or leave out "
            "`log_dir` and use `path=` for the history file (Keras's own logs get the figures either way)"
        )


def _gradient_values(gradient_pass: Any) -> Any:
    """The per-loss gradient values pass for the histograms, for the session's backend."""
    if gradient_pass.name == "jax":
        from gradviz.backends.jax.histograms import GradientValues as JaxGradientValues

        return JaxGradientValues(gradient_pass)
    from gradviz.backends.tensorflow.histograms import GradientValues

    return GradientValues(gradient_pass)
