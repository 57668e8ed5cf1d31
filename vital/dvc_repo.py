"""The one place vital reads what DVC records and sees: ``dvc.lock``, ``*.dvc`` files, ``dvc status``, the
cache's folder manifests, the default remote, and DVC's md5 of a file or folder.

Lineage (``vital lineage``, MLflow inputs), freshness (is a result current?) and ``vital plan`` (is the
locked sample the one these params make?) all go through here, so they agree on what a digest is: a file's
md5 is the md5 of its bytes; a folder's is DVC 3's ``<md5 of its manifest>.dir``, the manifest being the
sorted JSON list of ``{"md5", "relpath"}`` of every file under it, so a digest vital computes equals the one
``dvc add``/``dvc commit`` writes.
"""

from __future__ import annotations

import configparser
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

# bakeoff/dvc.yaml runs with wdir .., so every lock's paths are relative to the repository root
from vital.pipeline import PIPELINES


def file_md5(path: Path) -> str:
    """DVC's md5 of a file: the md5 of its bytes."""
    h = hashlib.md5()
    with Path(path).open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def dir_md5(path: Path) -> str:
    """DVC's md5 of a folder (``<hex>.dir``), as ``dvc add`` writes it in the ``.dvc`` file."""
    entries = [
        {"md5": file_md5(f), "relpath": f.relative_to(path).as_posix()}
        for f in Path(path).rglob("*")
        if f.is_file()
    ]
    entries.sort(key=lambda e: e["relpath"])
    return hashlib.md5(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest() + ".dir"


def md5(path: Path) -> str | None:
    """DVC's md5 of a file or a folder; None when nothing is there."""
    path = Path(path)
    if path.is_file():
        return file_md5(path)
    if path.is_dir():
        return dir_md5(path)
    return None


@dataclass(frozen=True)
class LockedStage:
    """One stage's entry in a dvc.lock: the md5 of each dep and out when it last ran, and its params."""

    deps: dict[str, str | None]
    outs: dict[str, str | None]
    params: dict[str, dict[str, Any]] = field(default_factory=dict)  # params file -> dotted key -> value
    lock_file: str = "dvc.lock"  # the lock that holds it (bakeoff/dvc.lock for the bakeoff's downstream)


@dataclass(frozen=True)
class Lock:
    """Every stage of the repository's dvc.lock files and the raw data its ``*.dvc`` files track."""

    stages: dict[str, LockedStage]
    raw: dict[str, tuple[str | None, str]]  # path tracked by a .dvc file -> (md5, the .dvc file's name)

    @classmethod
    def read(cls, root: Path, pipelines: tuple[str, ...] = PIPELINES) -> Lock:
        root = Path(root)
        stages: dict[str, LockedStage] = {}
        for pipeline in pipelines:
            lock = root / pipeline.replace("dvc.yaml", "dvc.lock")
            if not lock.is_file():
                continue
            for name, entry in (
                (yaml.safe_load(lock.read_text(encoding="utf-8")) or {}).get("stages") or {}
            ).items():
                stages[name] = LockedStage(
                    deps={_norm(d["path"]): d.get("md5") for d in entry.get("deps") or [] if "path" in d},
                    outs={_norm(o["path"]): o.get("md5") for o in entry.get("outs") or [] if "path" in o},
                    params=entry.get("params") or {},
                    lock_file=lock.relative_to(root).as_posix(),
                )
        raw: dict[str, tuple[str | None, str]] = {}
        for dvc_file in sorted(root.glob("*.dvc")):
            if not dvc_file.is_file():  # pathlib's glob matches the .dvc/ folder itself
                continue
            for out in (yaml.safe_load(dvc_file.read_text(encoding="utf-8")) or {}).get("outs") or []:
                raw[_norm(out["path"])] = (out.get("md5"), dvc_file.name)
        return cls(stages, raw)

    def producer(self, path: str) -> str | None:
        """The stage whose outputs list ``path`` exactly."""
        return next((name for name, s in self.stages.items() if path in s.outs), None)

    def consumed_older(self, stage: str, path: str) -> bool | None:
        """Whether ``stage`` ran on another version of ``path`` than its producer's last locked output
        (None: the lock cannot tell, e.g. ``path`` is no stage's output)."""
        producer = self.producer(path)
        produced = self.stages[producer].outs.get(path) if producer else None
        consumed = self.stages[stage].deps.get(path) if stage in self.stages else None
        if produced is None or consumed is None:
            return None
        return produced != consumed

    def is_raw(self, path: str) -> bool:
        """Whether ``path`` is, or lies inside, data tracked by a ``.dvc`` file."""
        return any(path == r or path.startswith(r.rstrip("/") + "/") for r in self.raw)


def _norm(path: str) -> str:
    return Path(path).as_posix().strip("/").removeprefix("./")


def cached_file_md5(root: Path, folder_md5: str | None, relpath: str) -> str | None:
    """A file's md5 from the DVC cache's manifest of the folder holding it (``<md5>.dir``), if cached."""
    if not folder_md5 or not folder_md5.endswith(".dir"):
        return None
    cache = Path(root) / ".dvc" / "cache"
    name = folder_md5[:2], folder_md5[2:]
    for manifest in (cache / "files" / "md5" / name[0] / name[1], cache / name[0] / name[1]):
        try:
            entries = json.loads(manifest.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        for entry in entries if isinstance(entries, list) else []:
            if isinstance(entry, dict) and entry.get("relpath") == relpath:
                return entry.get("md5")
    return None


def default_remote(root: Path = Path(".")) -> str | None:
    """The URL of the default DVC remote (``.dvc/config``, then ``.dvc/config.local``); a local path is made
    absolute (DVC resolves it against ``.dvc/``). None without one."""
    cfg = configparser.ConfigParser()
    cfg.read([Path(root) / ".dvc" / "config", Path(root) / ".dvc" / "config.local"])
    name = cfg.get("core", "remote", fallback=None)
    # DVC writes the section as ['remote "name"'] (configobj); configparser keeps those quotes in the name
    section = next((x for x in (f"'remote \"{name}\"'", f'remote "{name}"') if cfg.has_section(x)), None)
    url = cfg.get(section, "url", fallback=None) if name and section else None
    if url and "://" not in url and not Path(url).is_absolute():
        url = str((Path(root) / ".dvc" / url).resolve())
    return url


def remote_object(remote: str | None, digest: str | None) -> str | None:
    """Where DVC 3 keeps an object with this md5 in a remote (``<remote>/files/md5/ab/cdef...``)."""
    if not remote or not digest:
        return None
    return f"{remote.rstrip('/')}/files/md5/{digest[:2]}/{digest[2:]}"


@dataclass(frozen=True)
class Status:
    """``dvc status`` of every pipeline stage, with the stage graph it was computed on.

    ``changes``: stage name -> DVC's status entries for it (``"changed command"``, ``{"changed deps":
    {path: state}}``, ...); ``upstream``: stage name -> the names of every stage it depends on, transitively.
    Stages without a command (data sources) are left out.
    """

    changes: dict[str, list]
    upstream: dict[str, set[str]]

    def changed_outs(self) -> dict[str, str]:
        """Every output DVC reports changed (``modified``, ``deleted``, ``not in cache``), by path."""
        out: dict[str, str] = {}
        for entries in self.changes.values():
            for entry in entries:
                if isinstance(entry, dict) and isinstance(entry.get("changed outs"), dict):
                    out |= {_norm(p): s for p, s in entry["changed outs"].items()}
        return out


def status(root: Path) -> Status:
    """DVC's own status (``dvc.repo.Repo.status``) of both pipelines; raises what DVC raises outside a repo."""
    import networkx as nx
    from dvc.repo import Repo

    with Repo(str(root)) as repo:
        raw = repo.status()
        graph = repo.index.graph
        names = {}
        for stage in graph.nodes:
            if getattr(stage, "is_data_source", False) or not getattr(stage, "cmd", None):
                continue
            names[stage] = getattr(stage, "name", None) or str(stage)
        by_addr = {stage.addressing: name for stage, name in names.items()}
        changes = {by_addr[addr]: entries for addr, entries in raw.items() if addr in by_addr}
        upstream = {
            name: {names[s] for s in nx.descendants(graph, stage) if s in names}
            for stage, name in names.items()
        }
    return Status(changes, upstream)
