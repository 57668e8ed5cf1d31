"""Hugging Face hub checkpoints named by params: reachable, pinned, recorded.

Every param holding a hub id has a revision param beside it (``foundation.clip_revision``,
``align.model_revision``, ``embed.backbone_revision``, ``tune.base_revision``, ``finetune.base_revision``):
a branch, tag or commit, ``main`` by default. ``resolve`` turns the pair into the commit the stage loads,
recorded in the stage's metrics and MLflow run. A local directory passes through (no revision).

The hub is probed once per process with a 3-second connection: when it cannot be reached, huggingface_hub is
switched offline (``HF_HUB_OFFLINE``), so a checkpoint in the local cache still loads and one that is not stops
the stage in one line naming the param, instead of the library's retry loop (33 s, then a traceback).
"""

from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from functools import cache
from pathlib import Path
from urllib.parse import urlparse

from vital.params import ParamsError
from vital.paths import is_local

PROBE_TIMEOUT_S = 3.0


class HubError(ParamsError):
    """A hub checkpoint named by a param is unknown, or unreachable and not cached (one line, exit 2)."""


@dataclass(frozen=True)
class Resolved:
    param: str  # the dotted param that named it
    spec: str  # as written in params
    repo: str | None  # hub repo id (None: a local directory or a built-in name)
    revision: str | None  # as written
    commit: str | None  # what the revision resolved to

    def record(self) -> dict:
        return {
            "param": self.param,
            "spec": self.spec,
            "repo": self.repo,
            "revision": self.revision,
            "commit": self.commit,
        }


def _endpoint() -> str:
    return os.environ.get("HF_ENDPOINT", "https://huggingface.co")


@cache
def hub_unreachable() -> str | None:
    """Why the hub cannot be reached (None when it can), probed once: DNS and a TCP connection, 3 s at most."""
    if os.environ.get("HF_HUB_OFFLINE", "").lower() in ("1", "true", "yes"):
        return "HF_HUB_OFFLINE is set"
    url = urlparse(_endpoint())
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        socket.create_connection((url.hostname, port), timeout=PROBE_TIMEOUT_S).close()
    except OSError as e:
        return f"{url.hostname}:{port} not reachable ({e.__class__.__name__}: {e})"
    return None


def go_offline_if_unreachable() -> str | None:
    """Switch huggingface_hub (and transformers, through it) offline when the hub cannot be reached."""
    why = hub_unreachable()
    if why is not None:
        os.environ["HF_HUB_OFFLINE"] = "1"
        try:
            import huggingface_hub.constants as constants

            constants.HF_HUB_OFFLINE = True
        except ImportError:
            pass
    return why


def repo_of(spec: str, root: Path = Path(".")) -> str | None:
    """The hub repo id a spec names (``hf-hub:owner/name`` or ``owner/name``), or None for a local dir."""
    if spec.startswith("hf-hub:"):
        return spec.removeprefix("hf-hub:")
    if spec.startswith("local-dir:") or is_local(spec, root):
        return None
    return spec


def resolve(param: str, spec: str, revision: str | None, root: Path = Path(".")) -> Resolved:
    """The commit ``spec`` at ``revision`` is; raises :class:`HubError` naming ``param`` when it cannot be had."""
    repo = repo_of(spec, root)
    if repo is None:
        return Resolved(param, spec, None, None, None)
    why = go_offline_if_unreachable()
    if why is not None:
        commit = _cached_commit(repo, revision)
        if commit is None:
            raise HubError(
                f"{param}: {spec} (revision {revision or 'main'}) is not in the local Hugging Face cache and the "
                f"hub cannot be reached: {why}. Download it where the hub is reachable, or set {param} to a "
                "local directory"
            )
        return Resolved(param, spec, repo, revision, commit)
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        info = HfApi(endpoint=_endpoint()).model_info(repo, revision=revision, timeout=10)
    except RevisionNotFoundError:
        raise HubError(f"{param}: {spec} has no revision {revision!r} on the hub") from None
    except RepositoryNotFoundError:
        raise HubError(f"{param}: {spec} is not a model on the hub (or it is private; log in)") from None
    except (HfHubHTTPError, OSError) as e:
        raise HubError(
            f"{param}: {spec}: the hub did not answer ({' '.join(str(e).split())[:200]})"
        ) from None
    return Resolved(param, spec, repo, revision, info.sha)


def _cached_commit(repo: str, revision: str | None) -> str | None:
    from huggingface_hub import scan_cache_dir

    try:
        cached = {r.repo_id: r for r in scan_cache_dir().repos}
    except Exception:  # noqa: BLE001 - no cache folder at all
        return None
    entry = cached.get(repo)
    if entry is None:
        return None
    for rev in entry.revisions:
        if revision in (None, "main") or rev.commit_hash.startswith(revision) or revision in rev.refs:
            return rev.commit_hash
    return None


WEIGHTS = ["*.json", "*.safetensors", "*.model", "*.txt", "*.jinja", "open_clip_pytorch_model.bin"]


def pinned(param: str, spec: str, revision: str | None, root: Path = Path(".")) -> tuple[str, Resolved]:
    """What to load for ``spec``: itself when local, else the local snapshot of the resolved commit (from the
    cache, or downloaded), so every later ``from_pretrained`` of the stage loads exactly that commit."""
    resolved = resolve(param, spec, revision, root)
    if resolved.repo is None:
        return spec, resolved
    from huggingface_hub import snapshot_download

    try:
        path = snapshot_download(
            resolved.repo, revision=resolved.commit, allow_patterns=WEIGHTS, endpoint=_endpoint()
        )
    except Exception as e:  # noqa: BLE001 - any download failure ends the stage in one line naming the param
        raise HubError(f"{param}: {spec}@{resolved.commit}: {' '.join(str(e).split())[:200]}") from None
    return path, resolved


def tags(*resolved: Resolved) -> dict[str, str]:
    """MLflow tags of the hub checkpoints a model was made from: ``hub.<param>`` -> ``<repo>@<commit>``."""
    return {f"hub.{r.param}": f"{r.repo}@{r.commit}" for r in resolved if r.repo is not None}
