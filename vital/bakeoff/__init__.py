"""Selection bake-off: every selection method on the same candidate pool, against random (docs/bakeoff.md)."""
