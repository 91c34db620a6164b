"""Quantizers: vector quantization with straight-through or rotation-trick gradients, plain or SimVQ codebooks."""

from genkit.quantizers.gradients import RotationVariant, nearest_code, rotation_matrix, rotation_trick, straight_through
from genkit.quantizers.vq import CodebookKind, GradientRule, QuantizerOutput, VectorQuantizer, vector_quantize

__all__ = [
    "CodebookKind", "GradientRule", "QuantizerOutput", "RotationVariant", "VectorQuantizer", "nearest_code",
    "rotation_matrix", "rotation_trick", "straight_through", "vector_quantize",
]
