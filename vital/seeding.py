"""Stable per-record seeds live in :mod:`vital.seeding` (the sample stage needs them without the demo world)."""

from vital.seeding import rng_for, stable_seed

__all__ = ["rng_for", "stable_seed"]
