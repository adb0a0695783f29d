"""Re-export of :mod:`car_attacks.data.augment` (clipping-aware noise augmentation)."""

from .data.augment import ClippingAwareNoise, NoiseDistribution

__all__ = ["ClippingAwareNoise", "NoiseDistribution"]
