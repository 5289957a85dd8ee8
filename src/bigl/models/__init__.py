"""Networks: segmenter Φ, stage-1 translators, discriminators (paper Sec. 3)."""

from bigl.models.discriminators import (
    AlignmentDiscriminatorConfig,
    AttentionDiscriminator,
    FeatureDiscriminator,
    PatchDiscriminator,
    PatchDiscriminatorConfig,
)
from bigl.models.segmenter import (
    DualAttention,
    DualAttentionUNet,
    SegmenterConfig,
    SegmenterOutput,
    attention_grid,
    attention_row,
    config_from_dict,
    crop,
    pad_to_stride,
)
from bigl.models.translator import Generator, TranslatorConfig

__all__ = [
    "AlignmentDiscriminatorConfig",
    "AttentionDiscriminator",
    "DualAttention",
    "DualAttentionUNet",
    "FeatureDiscriminator",
    "Generator",
    "PatchDiscriminator",
    "PatchDiscriminatorConfig",
    "SegmenterConfig",
    "SegmenterOutput",
    "TranslatorConfig",
    "attention_grid",
    "attention_row",
    "config_from_dict",
    "crop",
    "pad_to_stride",
]
