"""The batches gradviz runs on: from an ``.npz`` file or seeded synthetic data."""

from gradviz.data.arrays import Data, TensorInfo, check_counts, load_npz, synthetic
from gradviz.data.batches import Batch, BatchSource

__all__ = ["Batch", "BatchSource", "Data", "TensorInfo", "check_counts", "load_npz", "synthetic"]
