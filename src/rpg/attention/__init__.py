"""Regional cross-attention: the processor, its installer, and the data they read."""

from rpg.attention.install import cross_attention_names, regional
from rpg.attention.processor import RegionalAttnProcessor
from rpg.attention.regions import RegionIndex, region_index, region_labels
from rpg.attention.spec import RegionalConditioning, RegionalLayout, Span

__all__ = [
    "RegionIndex",
    "RegionalAttnProcessor",
    "RegionalConditioning",
    "RegionalLayout",
    "Span",
    "cross_attention_names",
    "region_index",
    "region_labels",
    "regional",
]
