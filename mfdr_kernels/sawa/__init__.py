"""Sliding adaptive window attention (SAWA), SPEC §1."""

from .op import CHECKS, sawa_attention_map, sliding_adaptive_window_attention

__all__ = ["CHECKS", "sawa_attention_map", "sliding_adaptive_window_attention"]
