"""The model side: loading saved models, walking their graph, resolving their losses.

The only package that touches Keras; its private API is confined to
:mod:`gradviz.model.keras_internals`.
"""
