"""Datasets and input pipeline (DESIGN.md section 7): TFDS stores, synthetic blur, grain."""
