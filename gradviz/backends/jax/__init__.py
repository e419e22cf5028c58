"""The JAX gradient backend (Keras 3 with ``KERAS_BACKEND=jax``); imports no TensorFlow."""
