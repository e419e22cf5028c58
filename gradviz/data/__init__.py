"""The batches gradviz runs on: from an ``.npz`` file or seeded synthetic data."""

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

__all__ = [
    "GUESSED_IDS", "UNKNOWN_DIM", "Data", "TensorInfo", "check_counts", "is_mask", "load_npz", "load_npz_loose",
    "synthetic",
]
