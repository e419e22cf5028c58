"""The batches gradviz runs on: from an ``.npz`` file or seeded synthetic data."""

from gradviz.data.arrays import Data, TensorInfo, check_counts, load_npz, load_npz_loose, synthetic

__all__ = ["Data", "TensorInfo", "check_counts", "load_npz", "load_npz_loose", "synthetic"]
