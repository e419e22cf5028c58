"""Outputs: JSON, terminal text, HTML, GraphML, plots and the Graphviz diagram, from a report.

Nothing here imports TensorFlow or Keras: a report loaded back from JSON is drawn
exactly as the analysis that made it.
"""

from gradviz.output.files import (
    check_target,
    format_of,
    formats,
    prepare,
    write,
    write_bytes,
)

__all__ = ["check_target", "format_of", "formats", "prepare", "write", "write_bytes"]
