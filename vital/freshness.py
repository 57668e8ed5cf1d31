"""Is a result current? DVC's own status of the stage that produced it and of every stage upstream of it.

A metrics file is committed with the run that wrote it, so after a change it can outlive the code and
params that made it: `vital report` and the PR report ask this module before presenting a section as the
result of the code in force. A stage is **stale** when DVC would rerun it (a dep or param changed, its
command changed, it has no lock entry) or when a stage upstream of it is stale; its result is **unknown**
when its inputs are not in the workspace and the lock cannot vouch for them either.

In a fresh clone (outputs not pulled) an input that another stage produces is judged by dvc.lock: the stage
is current if it ran on the version its producer last locked; raw data under a ``.dvc`` file is taken as
committed (a changed ``data.dvc`` is seen once the data is pulled).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from vital import dvc_repo
from vital.dvc_repo import Lock, Status

# stages the demo's `make demo` leaves out, and the command that brings them up to date
REFRESH = {
    "finetune": "make vqa-finetune",
    "finetune_base": "make vqa-finetune",
    "evaluate_finetuned": "make vqa-finetune",
    "bakeoff_tune": "make bakeoff",
    "bakeoff_evaluate": "make bakeoff",
}


@dataclass(frozen=True)
class Freshness:
    stale: dict[str, str]  # stage -> why (its own change, or the upstream stage that is stale)
    unknown: dict[str, str]  # stage -> why it cannot be told (inputs missing from the workspace)

    def of(self, stage: str) -> str | None:
        """None when current; else one phrase saying why not and what refreshes it."""
        if stage in self.stale:
            return f"stale: {self.stale[stage]}; refresh with `{refresh_command(stage)}`"
        if stage in self.unknown:
            return f"not checked: {self.unknown[stage]}"
        return None


def refresh_command(stage: str) -> str:
    base = stage.split("@", 1)[0]
    return REFRESH.get(base, f"dvc repro {base}")


def _missing_outs(status: Status) -> set[str]:
    """Outputs absent from the workspace (a fresh clone): a dep on them, or on a folder holding them, is
    'modified' to DVC without saying anything about the code or params."""
    return {p for p, s in status.changed_outs().items() if s in ("not in cache", "deleted")}


def _own_change(
    changes: list, missing: set[str], locks: Lock | None = None, stage: str = ""
) -> tuple[str | None, str | None]:
    """(why stale, why unknown) from one stage's DVC status entries. An input missing from the workspace (a
    fresh clone) is judged by the lock instead: did this stage run on the version its producer last wrote?"""

    def absent(path: str) -> bool:
        return any(m == path or m.startswith(path.rstrip("/") + "/") for m in missing)

    stale, unknown = [], []
    for entry in changes:
        if isinstance(entry, str):  # "changed command", "always changed"
            stale.append(entry)
            continue
        for kind, what in entry.items():
            if kind == "changed outs":
                continue  # outputs missing or edited: the result is still the locked run's
            if not isinstance(what, dict):
                stale.append(kind)
                continue
            for path, state in what.items():
                if state == "deleted" or absent(path):
                    older = locks.consumed_older(stage, path) if locks is not None else None
                    if older is None and locks is not None and locks.is_raw(path):
                        continue  # raw data not pulled: its version is the committed .dvc file's
                    if older:
                        stale.append(f"ran on an older {path} than its producer's last output")
                    elif older is None:
                        unknown.append(f"{path} {state}")
                else:
                    stale.append(f"{path} {state}")
    return ("; ".join(stale[:3]) or None), ("; ".join(unknown[:3]) or None)


def check(root: Path) -> Freshness:
    """DVC's status of every stage in both pipelines, propagated downstream."""
    status = dvc_repo.status(root)
    missing = _missing_outs(status)
    locks = Lock.read(root)
    own_stale, own_unknown = {}, {}
    for name, changes in status.changes.items():
        why_stale, why_unknown = _own_change(changes, missing, locks, name)
        if why_stale:
            own_stale[name] = why_stale
        elif why_unknown:
            own_unknown[name] = "its inputs are not in the workspace (`dvc pull`, or `dvc repro`)"
    stale, unknown = dict(own_stale), dict(own_unknown)
    for name, upstream in status.upstream.items():
        if name in stale:
            continue
        stale_upstream = sorted(s for s in upstream if s in own_stale)
        if stale_upstream:
            stale[name] = f"upstream stage {stale_upstream[0]} is stale"
            unknown.pop(name, None)
    return Freshness(stale, unknown)
