"""vital: clinician-aligned biomedical visual instruction tuning as a reproducible pipeline.

``VITAL_FORBID_IMPORTS`` (comma-separated module prefixes, e.g. ``vital.demo,vital.world``): when set,
importing any module under one of them raises ``ImportError`` naming it. It proves that a profile's stages
run without the demo code (tests/test_paper_profile.py); unset, nothing is installed.

Importing vital caps the CPU float kernels at AVX2 before torch loads (``vital.determinism``), so that
stage outputs do not depend on the machine's instruction set; ``VITAL_CPU_KERNELS=native`` opts out.
"""

import os
import sys

__version__ = "0.1.0"


class ForbiddenImportFinder:
    """A ``sys.meta_path`` finder that refuses the modules under ``prefixes`` (``a.b`` forbids ``a.b.c``)."""

    def __init__(self, prefixes: list[str]):
        self.prefixes = prefixes

    def find_spec(self, fullname, path=None, target=None):
        for p in self.prefixes:
            if fullname == p or fullname.startswith(p + "."):
                raise ImportError(
                    f"import of {fullname} is forbidden by VITAL_FORBID_IMPORTS={p}", name=fullname
                )
        return None  # not ours: the usual finders go on


def _forbid_imports() -> None:
    prefixes = [p.strip() for p in os.environ.get("VITAL_FORBID_IMPORTS", "").split(",") if p.strip()]
    if prefixes and not any(isinstance(f, ForbiddenImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, ForbiddenImportFinder(prefixes))


_forbid_imports()

from vital.determinism import pin_cpu_kernels  # noqa: E402

pin_cpu_kernels()
