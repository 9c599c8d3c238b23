"""Dynamic frame convolution (DFC), SPEC §2."""

from .op import CHECKS, dynamic_frame_conv

__all__ = ["CHECKS", "dynamic_frame_conv"]
