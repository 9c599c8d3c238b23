"""The GCPU recurrence (paper eqs. 1-6, SPEC §3), fused: forward and backpropagation through time."""

from .op import CHECKS, gated_context_recurrence

__all__ = ["CHECKS", "gated_context_recurrence"]
