"""Augmentation use cases: saved presets (which one training uses) and the page's preview."""
