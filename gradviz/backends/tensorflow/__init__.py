"""The TensorFlow gradient backend."""
