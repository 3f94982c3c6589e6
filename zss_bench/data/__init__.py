"""Dataset layer: reading annotation files and mapping them into a protocol's index space."""

from zss_bench.data.masks import LabelFileError, read_label_png, to_contiguous

__all__ = ["LabelFileError", "read_label_png", "to_contiguous"]
