"""Denoising Diffusion Probabilistic Models (Ho, Jain, Abbeel 2020) in PyTorch."""

__version__ = "0.1.0"
