"""SMET: Sparse Memory-Efficient Training of LLaMA-style language models."""

__version__ = "0.1.0"
