"""When a stage that ran is still a failure: too many of its outputs failed, or none succeeded.

The stage writes what succeeded, its failure list and its metrics first (every paid answer is
already in the request cache), then raises :class:`StageFailed`, whose message is the one line
the stage wrapper prints before exiting non-zero, so DVC never locks a near-empty output.
"""

from __future__ import annotations

from collections.abc import Mapping

# share of a stage's outputs that may fail before the stage fails (client.max_failed_share: null)
DEFAULT_MAX_FAILED_SHARE = {"generate": 0.05, "judge": 0.02}


class StageFailed(ValueError):
    """The stage ran but its result is not usable; the message is one line naming the cause and the knob."""


def _reasons(by_reason: Mapping[str, int], top: int = 3) -> str:
    items = sorted(by_reason.items(), key=lambda kv: (-kv[1], kv[0]))
    text = ", ".join(f"{r} {n}" for r, n in items[:top])
    return text + (f", {len(items) - top} more reasons" if len(items) > top else "")


def check_failed_share(
    section: str,
    what: str,
    failed: int,
    total: int,
    by_reason: Mapping[str, int],
    limit: float | None,
    files: str,
) -> None:
    """Raise :class:`StageFailed` when nothing of ``total`` succeeded, or more than ``limit`` failed.

    ``limit`` None checks only the first rule (offline stand-ins have no ``client`` section).
    """
    if total <= 0:
        return
    reasons = f" ({_reasons(by_reason)})" if by_reason else ""
    if failed >= total:
        raise StageFailed(
            f"{section}: all {total} {what} failed{reasons}; nothing usable was written (see {files})"
        )
    share = failed / total
    if limit is not None and share > limit:
        raise StageFailed(
            f"{section}: {failed} of {total} {what} failed ({share:.1%} > {section}.client.max_failed_share "
            f"{limit:g}){reasons}; what succeeded is written and cached, a rerun pays only for the failed "
            f"(see {files})"
        )


def max_failed_share(section: str, configured: float | None) -> float:
    return DEFAULT_MAX_FAILED_SHARE.get(section, 0.05) if configured is None else configured
