"""Team workflows on a real DVC pipeline: an S3 remote (moto's S3 server on 127.0.0.1) shared by two clones,
the run cache, and experiments shared through a git remote with their data."""

from __future__ import annotations

import configparser
import json
import sys
from pathlib import Path

import pytest

from tests.dvc_toy import clear_runs, env, make_repo, metrics, runs, sh

REPO = Path(__file__).resolve().parents[1]
BUCKET = "vital-team"


@pytest.fixture(scope="module")
def s3():
    """moto's S3 server (server mode: real HTTP on 127.0.0.1, a free port); yields the subprocess env."""
    boto3 = pytest.importorskip("boto3", reason="the dev extra installs boto3 with moto[server]")
    server_mod = pytest.importorskip("moto.server", reason="the dev extra installs moto[server]")
    pytest.importorskip("dvc_s3", reason="the dev extra installs dvc-s3")
    server = server_mod.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    endpoint = f"http://{host}:{port}"
    creds = {
        "AWS_ACCESS_KEY_ID": "testing",
        "AWS_SECRET_ACCESS_KEY": "testing",
        "AWS_DEFAULT_REGION": "us-east-1",
    }
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1", **_keys(creds)).create_bucket(
        Bucket=BUCKET
    )
    yield {"endpoint": endpoint, "env": env(**creds)}
    server.stop()


def _keys(creds: dict[str, str]) -> dict[str, str]:
    return {
        "aws_access_key_id": creds["AWS_ACCESS_KEY_ID"],
        "aws_secret_access_key": creds["AWS_SECRET_ACCESS_KEY"],
    }


def _add_s3_remote(repo: Path, s3: dict, prefix: str) -> None:
    """What the README tells a team to do: a default remote; only the endpoint (not the keys) in config."""
    sh(repo, "dvc", "remote", "add", "-d", "team", f"s3://{BUCKET}/{prefix}")
    sh(repo, "dvc", "remote", "modify", "team", "endpointurl", s3["endpoint"])


def _objects(s3: dict, prefix: str) -> list[str]:
    import boto3

    client = boto3.client(
        "s3",
        endpoint_url=s3["endpoint"],
        region_name="us-east-1",
        aws_access_key_id="testing",
        aws_secret_access_key="testing",
    )
    pages = client.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [o["Key"] for page in pages for o in page.get("Contents", [])]


def test_s3_remote_round_trip_fresh_clone_reproduces_nothing(tmp_path, s3):
    a = make_repo(tmp_path / "alice")
    _add_s3_remote(a, s3, "store")
    sh(a, "dvc", "repro", "-q", environ=s3["env"])
    assert runs(a) == ["prepare", "train", "evaluate"]
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-qm", "run the pipeline")
    out = sh(a, "dvc", "push", "--run-cache", environ=s3["env"])
    assert "pushed" in out
    keys = _objects(s3, "store/")
    assert any(k.startswith("store/files/md5/") for k in keys), keys  # data, in DVC 3's remote layout
    assert any(k.startswith("store/runs/") for k in keys), keys  # the run cache

    # without credentials in the environment the remote refuses (none are in .dvc/config)
    b = tmp_path / "bob"
    sh(tmp_path, "git", "clone", "-q", str(a), str(b))
    assert "testing" not in (b / ".dvc" / "config").read_text()
    clear_runs(a)
    sh(b, "dvc", "pull", environ=s3["env"])
    assert (b / "models" / "model.json").read_bytes() == (a / "models" / "model.json").read_bytes()
    assert (b / "data" / "raw.txt").is_file()
    out = sh(b, "dvc", "repro", environ=s3["env"])
    assert runs(b) == [], out  # nothing reran
    assert "didn't change, skipping" in out
    assert sh(b, "dvc", "status", environ=s3["env"]).strip().endswith("Data and pipelines are up to date.")
    assert metrics(b) == metrics(a)
    diff = json.loads(sh(b, "dvc", "metrics", "diff", "--json", environ=s3["env"]))
    assert diff == {}  # identical to the committed metrics


def test_run_cache_from_s3_restores_outputs_without_running(tmp_path, s3):
    """The CI workflow's trick: a clone without the lock pulls the run cache and `dvc repro` restores the
    stages' cached outputs instead of running them. DVC does not cache `cache: false` outputs (the metrics),
    so a stage with one reruns: here only `evaluate`, which writes nothing else."""
    a = make_repo(tmp_path / "alice", words="one two three")
    _add_s3_remote(a, s3, "runcache")
    sh(a, "dvc", "repro", "-q", environ=s3["env"])
    sh(a, "dvc", "push", "--run-cache", environ=s3["env"])
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-qm", "run")
    expected = metrics(a)
    # the lock is not committed in a PR that changes nothing yet: drop it, so only the run cache can help
    c = tmp_path / "ci"
    sh(tmp_path, "git", "clone", "-q", str(a), str(c))
    (c / "dvc.lock").unlink()
    (c / "metrics" / "eval.json").unlink()
    clear_runs(a)
    sh(c, "dvc", "pull", "--run-cache", "data.dvc", environ=s3["env"])
    out = sh(c, "dvc", "repro", "--pull", environ=s3["env"])
    assert runs(c) == ["evaluate"], out
    assert (
        "Stage 'prepare' is cached - skipping run" in out and "Stage 'train' is cached - skipping run" in out
    )
    assert metrics(c) == expected


def test_missing_credentials_fail_with_a_clear_error(tmp_path, s3):
    a = make_repo(tmp_path / "alice")
    _add_s3_remote(a, s3, "nocreds")
    no_creds = {k: v for k, v in s3["env"].items() if not k.startswith("AWS_")}
    no_creds.update(
        AWS_EC2_METADATA_DISABLED="true",
        AWS_SHARED_CREDENTIALS_FILE=str(tmp_path / "none"),
        AWS_CONFIG_FILE=str(tmp_path / "none"),
    )
    with pytest.raises(AssertionError, match="failed") as err:
        sh(a, "dvc", "push", environ=no_creds)
    assert "credentials" in str(err.value).lower(), err.value
    assert _objects(s3, "nocreds/") == []


def test_shared_experiments_through_a_git_remote(tmp_path, s3):
    """Alice sweeps a param and pushes the experiments (with their data); Bob's clone sees and applies one."""
    origin = tmp_path / "origin.git"
    sh(tmp_path, "git", "init", "-q", "--bare", "-b", "main", str(origin))
    a = make_repo(tmp_path / "alice")
    _add_s3_remote(a, s3, "exps")
    sh(a, "dvc", "repro", "-q", environ=s3["env"])
    sh(a, "git", "add", "-A")
    sh(a, "git", "commit", "-qm", "baseline")
    sh(a, "git", "remote", "add", "origin", str(origin))
    sh(a, "git", "push", "-q", "origin", "main")
    sh(a, "dvc", "push", environ=s3["env"])
    by_name = {}
    for w in (2, 3):
        sh(a, "dvc", "exp", "run", "-q", "-n", f"w{w}", "-S", f"train.weight={w}", environ=s3["env"])
        by_name[f"w{w}"] = metrics(a)
    assert by_name["w2"] != by_name["w3"]
    sh(a, "dvc", "exp", "push", "origin", "w2", "w3", environ=s3["env"])
    refs = sh(tmp_path, "git", "ls-remote", str(origin))
    assert "refs/exps/" in refs and "w2" in refs and "w3" in refs

    b = tmp_path / "bob"
    sh(tmp_path, "git", "clone", "-q", str(origin), str(b))
    sh(b, "dvc", "exp", "pull", "origin", "w2", "w3", environ=s3["env"])
    shown = json.loads(sh(b, "dvc", "exp", "show", "--json", environ=s3["env"]))
    names = {
        exp.get("name")
        for commit in shown
        for exp in (commit.get("experiments") or [])
        for exp in (exp.get("revs") or [])
    }
    assert {"w2", "w3"} <= names, shown
    clear_runs(a)
    sh(b, "dvc", "exp", "apply", "w3", environ=s3["env"])
    assert "weight: 3" in (b / "params.yaml").read_text()
    assert metrics(b) == by_name["w3"]
    # the experiment's outputs came from the remote (exp pull fetched its cache), not from a rerun
    sh(b, "dvc", "checkout", environ=s3["env"])
    assert json.loads((b / "models" / "model.json").read_text())["weight"] == 3
    out = sh(b, "dvc", "repro", environ=s3["env"])
    assert runs(b) == [], out
    # the PR report takes an experiment name as a revision: what w2 changed against the baseline
    report = sh(
        b,
        sys.executable,
        "-m",
        "vital.cli",
        "report",
        "--base",
        "main",
        "--head",
        "w2",
        "--md",
        "--no-mlflow",
        environ=env(PYTHONPATH=str(REPO)),
    )
    assert "| `train.weight` | `1.0` | `2` |" in report, report
    assert "`w2 (" in report.splitlines()[0]
    assert "| metrics/eval.json | `mean` |" in report


def test_demo_default_remote_stays_the_in_repo_store():
    """The README's S3/GCS/Azure/SSH remotes are added by the user; the demo still pulls offline."""
    cfg = configparser.ConfigParser()
    cfg.read(REPO / ".dvc" / "config")
    assert cfg["core"]["remote"] == "demo"
    url = cfg["'remote \"demo\"'"]["url"]  # DVC's section name keeps its quotes in configparser
    assert "://" not in url and (REPO / ".dvc" / url).resolve() == (REPO / "dvcstore").resolve()
