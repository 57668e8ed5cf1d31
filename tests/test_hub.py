"""Hub checkpoints named by params: resolved to a commit, recorded in MLflow, and stopped in one line naming the
param when unknown or unreachable (fast: no retry loop). A stand-in for the hub's model-info API on 127.0.0.1."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import huggingface_hub.constants as constants
import pytest
import yaml

from vital import hub
from vital.params import FoundationParams, MlflowParams
from vital.paths import Paths
from vital.stage import run_stage

COMMIT = "0123456789abcdef0123456789abcdef01234567"


class _Hub(BaseHTTPRequestHandler):
    """GET /api/models/<owner>/<name>[/revision/<rev>]: known/clip answers with a sha, others 404."""

    def do_GET(self):  # noqa: N802 - http.server's name
        parts = self.path.split("?")[0].strip("/").split("/")
        repo = "/".join(parts[2:4])
        revision = parts[5] if len(parts) > 5 else "main"
        if repo == "known/clip" and revision in ("main", "v1", COMMIT):
            body = json.dumps({"id": repo, "sha": COMMIT, "siblings": []}).encode()
            self.send_response(200)
        elif repo == "known/clip":
            body = b'{"error": "Invalid rev id"}'
            self.send_response(404)
            self.send_header("X-Error-Code", "RevisionNotFound")
        else:
            body = b'{"error": "Repository not found"}'
            self.send_response(404)
            self.send_header("X-Error-Code", "RepoNotFound")
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def fake_hub(monkeypatch):
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Hub)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_address[1]}")
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(
        constants, "HF_HUB_OFFLINE", False
    )  # hub.go_offline_if_unreachable sets it per process
    hub.hub_unreachable.cache_clear()
    yield
    server.shutdown()
    hub.hub_unreachable.cache_clear()


@pytest.fixture
def no_hub(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # discard port: nothing listens
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf"))  # an empty cache
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setattr(
        constants, "HF_HUB_OFFLINE", False
    )  # hub.go_offline_if_unreachable sets it per process
    hub.hub_unreachable.cache_clear()
    yield
    hub.hub_unreachable.cache_clear()


def test_a_hub_id_resolves_to_its_commit_and_a_local_dir_passes_through(fake_hub, tmp_path):
    r = hub.resolve("embed.backbone", "hf-hub:known/clip", "v1", tmp_path)
    assert (r.repo, r.commit) == ("known/clip", COMMIT)
    (tmp_path / "checkpoints" / "clip").mkdir(parents=True)
    local = hub.resolve("embed.backbone", "checkpoints/clip", None, tmp_path)
    assert local.repo is None and local.commit is None
    assert hub.tags(r, local) == {"hub.embed.backbone": f"known/clip@{COMMIT}"}


def test_unknown_id_or_revision_names_the_param(fake_hub, tmp_path):
    with pytest.raises(hub.HubError, match=r"^tune\.base: nobody/nothing is not a model on the hub"):
        hub.resolve("tune.base", "nobody/nothing", None, tmp_path)
    with pytest.raises(hub.HubError, match=r"^foundation\.clip: hf-hub:known/clip has no revision 'v9'"):
        hub.resolve("foundation.clip", "hf-hub:known/clip", "v9", tmp_path)


def test_unreachable_hub_stops_fast_naming_the_param(no_hub, tmp_path):
    start = time.perf_counter()
    with pytest.raises(hub.HubError, match=r"^align\.model: llava-hf/llava-1\.5-13b-hf .* cannot be reached"):
        hub.resolve("align.model", "llava-hf/llava-1.5-13b-hf", None, tmp_path)
    assert time.perf_counter() - start < 5  # one 3-second probe at most, not huggingface_hub's 33-s retries


def _repo(root, clip: str) -> None:
    params = {"foundation": {"backend": "pretrained", "clip": clip}, "mlflow": {"enabled": True}}
    (root / "params.yaml").write_text(yaml.safe_dump(params))


def test_foundation_records_the_resolved_commit_in_mlflow(fake_hub, tmp_path, monkeypatch):
    import mlflow
    from mlflow import MlflowClient

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    _repo(tmp_path, "hf-hub:known/clip")
    from vital.foundation import run

    fp = FoundationParams(backend="pretrained", clip="hf-hub:known/clip")
    metrics = run(fp, Paths(tmp_path), MlflowParams(enabled=True))
    assert metrics["hub"]["commit"] == COMMIT
    mlflow.set_tracking_uri(f"sqlite:///{tmp_path / 'mlflow.db'}")
    version = MlflowClient().get_model_version("vital-foundation", "1")
    assert version.tags["hub.foundation.clip"] == f"known/clip@{COMMIT}"


def test_a_stage_with_an_unreachable_hub_ends_in_one_line(no_hub, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    _repo(tmp_path, "hf-hub:microsoft/BiomedCLIP-PubMedBERT_256-vit_base_patch16_224")
    from vital.foundation import run_stage as foundation

    with pytest.raises(SystemExit) as exit_:
        run_stage("foundation", lambda p, paths: foundation(p, paths), str(tmp_path / "params.yaml"))
    err = capsys.readouterr().err.strip()
    assert exit_.value.code == 2 and "\n" not in err and "Traceback" not in err
    assert err.startswith("[foundation] error: foundation.clip: hf-hub:microsoft/BiomedCLIP"), err
