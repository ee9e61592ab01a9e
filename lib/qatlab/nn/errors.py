"""The error every stage of the graph rewrite raises for a layer it cannot quantize."""

from __future__ import annotations


class UnsupportedLayerError(ValueError):
    """A layer prepare_qat / convert cannot quantize; names the node and its type."""
