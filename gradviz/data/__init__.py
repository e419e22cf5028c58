"""The batches gradviz runs on: an ``.npz`` file, seeded synthetic data, or anything ``Model.fit`` takes."""

from gradviz.data.arrays import (
    GUESSED_IDS,
    UNKNOWN_DIM,
    Data,
    TensorInfo,
    check_counts,
    is_mask,
    load_npz,
    load_npz_loose,
    synthetic,
)
from gradviz.data.batches import Batch, BatchSource
from gradviz.data.fit import FitData, Layout, fit_data, load_saved_dataset

__all__ = [
    "GUESSED_IDS", "UNKNOWN_DIM", "Batch", "BatchSource", "Data", "FitData", "Layout", "TensorInfo", "check_counts",
    "fit_data", "is_mask", "load_npz", "load_npz_loose", "load_saved_dataset", "synthetic",
]
