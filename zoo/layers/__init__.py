"""Shared building blocks: attention, positions, norms, MLPs, scans, wavelets, token reduction.

Importing the scan and linear-attention modules registers their custom ops (and FLOP formulas), so
`torch.utils.flop_counter.FlopCounterMode` counts them whenever zoo.layers is imported.
"""

from .attention import (
    Attention,
    DynamicCache,
    StaticCache,
    block_mask,
    causal_mask,
    padding_mask,
    scaled_dot_product,
    segment_ids_from_cu_seqlens,
    sliding_window_mask,
)
from .embed import PatchEmbed, TimestepEmbedding, timestep_embedding
from .flops import count_flops, flops_by_op
from .linear_attention import (
    gated_linear_attention,
    gated_linear_attention_recurrent,
    gated_linear_attention_step,
)
from .mamba import Mamba, causal_conv1d_silu
from .mlp import GEGLU, Mlp, SwiGLU
from .modulation import AdaLNModulation, ScaleShiftTable, gated_residual, modulate
from .norm import GroupNorm, HeadLayerNorm, HeadRMSNorm, LayerNorm, RMSNorm, qk_norm
from .rotary import Llama3RopeScaling, RotaryEmbedding, apply_rotary, rotary_inv_freq
from .scan2d import image_to_sequences, light_field_to_sequences, sequences_to_image, sequences_to_light_field
from .selective_scan import selective_scan, selective_scan_ref, selective_state_update
from .token_reduction import (
    QueryCompressor,
    TokenMerge,
    TokenSelection,
    bipartite_soft_matching,
    downsample_token_grid,
    frame_difference_mask,
    pixel_shuffle_tokens,
    select_tokens_by_attention,
)
from .wavelet import haar_dwt2d, haar_dwt2d_concat, haar_idwt2d

__all__ = [
    "AdaLNModulation", "Attention", "DynamicCache", "GEGLU", "GroupNorm", "HeadLayerNorm", "HeadRMSNorm", "LayerNorm", "Llama3RopeScaling",
    "Mamba", "Mlp", "PatchEmbed", "QueryCompressor", "RMSNorm", "RotaryEmbedding", "ScaleShiftTable", "StaticCache",
    "SwiGLU", "TimestepEmbedding", "TokenMerge", "TokenSelection", "apply_rotary", "bipartite_soft_matching",
    "block_mask", "causal_conv1d_silu", "causal_mask", "count_flops", "downsample_token_grid", "flops_by_op",
    "frame_difference_mask", "gated_linear_attention", "gated_linear_attention_recurrent",
    "gated_linear_attention_step", "gated_residual", "haar_dwt2d", "haar_dwt2d_concat", "haar_idwt2d",
    "image_to_sequences", "light_field_to_sequences", "modulate", "padding_mask", "pixel_shuffle_tokens", "qk_norm",
    "rotary_inv_freq", "scaled_dot_product", "segment_ids_from_cu_seqlens", "select_tokens_by_attention",
    "selective_scan", "selective_scan_ref", "selective_state_update", "sequences_to_image",
    "sequences_to_light_field", "sliding_window_mask", "timestep_embedding",
]
