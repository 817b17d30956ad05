"""Flax (linen) models: ViT image tower, text transformer, heads, the two-tower retrieval model."""
