"""rsjax: cross-modal image-text retrieval for remote sensing, in JAX/Flax."""

__version__ = "0.1.0"
