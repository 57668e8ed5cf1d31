"""vital: clinician-aligned biomedical visual instruction tuning as a reproducible pipeline."""

__version__ = "0.1.0"
