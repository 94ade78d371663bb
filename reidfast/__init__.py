"""reidfast: fused kernels and fast trainers for GAN-based person re-identification."""

__version__ = "0.1.0"
