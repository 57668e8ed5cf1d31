"""Embed once: image and text features of every candidate, keyed by candidate id.

Image features are computed once per figure and shared by its candidates; text features once per
candidate. A sweep over the selector head never touches this stage (its DVC deps are the backbone, the
candidates and the sample), and ``run`` itself skips the work when its fingerprint is unchanged.
"""

from __future__ import annotations

from vital.embed.stage import run

__all__ = ["run"]
