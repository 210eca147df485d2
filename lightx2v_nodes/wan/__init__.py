"""Wan2.1 DiT: config detection, key layouts, checkpoint reading, the model and attention backends."""
