"""Regional cross-attention: the processor, its installer, and the data they read."""

from rpg.attention.spec import RegionalConditioning, RegionalLayout, Span

__all__ = ["RegionalConditioning", "RegionalLayout", "Span"]
