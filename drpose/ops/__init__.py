"""drpose.ops: the public fused ops (see ARCHITECTURE.md, "An op, end to end")."""

from drpose.ops.row_attention import row_attention, row_attention_reference

__all__ = [
    "row_attention",
    "row_attention_reference",
]
