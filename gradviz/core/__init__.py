"""The core: statistics, analysis, findings and weighting, on NumPy and networkx only.

Nothing here imports TensorFlow, Keras or JAX (``tests/test_architecture.py``
proves it with their imports blocked), so a saved report can be analysed and
drawn again on any machine.
"""
