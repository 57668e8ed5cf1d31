"""One line, never a traceback: every stage of both profiles, each of its inputs missing, empty or unreadable, and
unusable settings (a cache folder under a regular file, an output folder that cannot be made).

Stages run in-process through ``vital.stage.run_stage`` (what ``stages/<x>.py`` runs), in a temp repository with
no dvc.yaml (so no deps check) and every other input absent: an exception that escapes run_stage, or a traceback
printed, fails the case. A stage may also end normally (an optional input); what it may not do is crash.
The inputs of each stage are the data deps ``vital dag`` finds for the profile's params.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from tests import paper_world
from tests.openai_server import FakeOpenAIServer
from vital import hub
from vital.cli import main as cli
from vital.dag import stage_deps
from vital.params import parse_params
from vital.pipeline import STAGES
from vital.stage import call, run_stage

REPO = Path(__file__).resolve().parents[1]
GARBAGE = b"\x00\xff{not json\n"


@pytest.fixture(scope="module")
def server():
    with FakeOpenAIServer(content_fn=paper_world.content) as s:
        yield s


@functools.cache
def _profile_text(name: str, base_url: str) -> str:
    if name == "demo":
        return (REPO / "params.yaml").read_text(encoding="utf-8")
    p = yaml.safe_load((REPO / "params-paper.yaml").read_text(encoding="utf-8"))
    for section in ("generate", "judge", "chat_eval"):
        client = p.setdefault(section, {}).setdefault("client", {})
        client |= {"base_url": base_url, "timeout_s": 5, "max_retries": 0}
    return yaml.safe_dump(p)


@functools.cache
def _profile_params(name: str, base_url: str):
    return parse_params(yaml.safe_load(_profile_text(name, base_url)))


def _profile(name: str, base_url: str) -> dict:
    return yaml.safe_load(_profile_text(name, base_url))


def _options(name: str, params) -> dict:
    return {
        "tune": {"subset": "top", "seed": 0},
        "finetune": {"model": "models/tuned/top-s0", "name": "top-s0", "seed": 0},
        "finetune_base": {"model": params.tune.base, "name": "base", "seed": 0},
        "bakeoff_tune": {"method": (params.bakeoff.downstream_methods or ["random"])[0], "seed": 0},
        "control_tune": {"arm": "truth", "seed": 0},
    }.get(name, {})


def _inputs(name: str, params) -> list[str]:
    item = {"item.subset": "top", "item.seed": "0", "tune.keep": str(params.tune.keep)}
    deps = stage_deps(STAGES[name], params, REPO).data
    return sorted({re.sub(r"\$\{([^}]+)\}", lambda m: item.get(m.group(1), "x"), d) for d in deps})


def _cases():
    for profile in ("demo", "paper"):
        params = _profile_params(profile, "http://127.0.0.1:9/v1")
        for name in STAGES:
            for rel in _inputs(name, params):
                for variant in ("missing", "empty", "unreadable"):
                    yield pytest.param(profile, name, rel, variant, id=f"{profile}-{name}-{rel}-{variant}")
            yield pytest.param(
                profile, name, "metrics", "output_blocked", id=f"{profile}-{name}-metrics-blocked"
            )


def _make(root: Path, rel: str, variant: str) -> None:
    path = root / rel
    if variant == "missing":
        return
    is_dir = not Path(rel).suffix or rel.endswith(("/", "models/base", "shards"))
    if variant == "output_blocked":  # metrics/ (every stage writes there) is a regular file
        path.write_bytes(b"")
        return
    if is_dir:
        path.mkdir(parents=True, exist_ok=True)
        if variant == "unreadable":
            for leaf in ("config.json", "records.jsonl", "open_clip_config.json"):
                (path / leaf).write_bytes(GARBAGE)
        return
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"" if variant == "empty" else GARBAGE)


def _run(root: Path, name: str, params_file: Path, options: dict, capsys) -> tuple[int, str]:
    stage = STAGES[name]
    try:
        run_stage(name, lambda p, paths, **o: call(stage, p, paths, **o), str(params_file), options)
        code = 0
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    return code, capsys.readouterr().err


@pytest.fixture
def offline_repo(tmp_path, monkeypatch, server):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", paper_world.API_KEY)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:9")  # nothing listens: the hub is unreachable
    monkeypatch.setenv("HF_HOME", str(tmp_path / ".hf"))
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"sqlite:///{tmp_path / 'mlflow.db'}")
    hub.hub_unreachable.cache_clear()
    yield tmp_path
    hub.hub_unreachable.cache_clear()


def _assert_one_line(name: str, code: int, err: str) -> None:
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if "error:" in line]
    if code:
        assert code == 2 and len(errors) == 1, err[-3000:]
        assert errors[0].startswith(f"[{name}] error: "), errors


@pytest.mark.parametrize("profile,name,rel,variant", list(_cases()))
def test_every_stage_ends_in_one_line(offline_repo, server, capsys, profile, name, rel, variant):
    root = offline_repo
    params_file = root / "params.yaml"
    params_file.write_text(_profile_text(profile, server.base_url), encoding="utf-8")
    _make(root, rel, variant)
    options = _options(name, _profile_params(profile, server.base_url))
    code, err = _run(root, name, params_file, options, capsys)
    _assert_one_line(name, code, err)


def _paid_world(root: Path, base_url: str, cache_dir: str) -> Path:
    """A paper-profile repository whose generate and judge inputs are all there, the cache elsewhere."""
    records = paper_world.corpus(root / "data")
    (root / "artifacts").mkdir()
    shutil.copy(root / "data" / "corpus" / "figures.jsonl", root / "artifacts" / "sample.jsonl")
    cands = [
        {
            "id": f"{r['pair_id']}#0",
            "pair_id": r["pair_id"],
            "image": r["image"],
            "domain": "ct_scan",
            "conversations": [
                {"from": "human", "value": "<image>\nWhat?"},
                {"from": "gpt", "value": "A lesion."},
            ],
        }
        for r in records
    ]
    paper_world._jsonl(root / "artifacts" / "candidates.jsonl", cands)
    raw = _profile("paper", base_url)
    raw["sample"]["corpus"] = {"format": "vital"}  # the images are local: no fetch
    raw["fetch"] = {"enabled": False}
    for section in ("generate", "judge"):
        raw[section] |= {"mode": "online"}
        raw[section]["client"]["cache_dir"] = cache_dir
    params_file = root / "params.yaml"
    params_file.write_text(yaml.safe_dump(raw), encoding="utf-8")
    return params_file


@pytest.mark.parametrize("name", ["generate", "judge"])
def test_a_cache_dir_under_a_regular_file_is_one_line_naming_the_param(offline_repo, server, capsys, name):
    root = offline_repo
    (root / "a_file").write_text("not a folder")
    params_file = _paid_world(root, server.base_url, "a_file/cache")
    code, err = _run(root, name, params_file, {}, capsys)
    _assert_one_line(name, code, err)
    assert code == 2 and f"{name}.client.cache_dir: request cache at a_file/cache cannot be opened" in err


@pytest.mark.parametrize(
    "argv",
    [
        ["plan"],
        ["generate", "--dry-run"],
        ["judge", "--dry-run"],
        ["chat_eval", "--dry-run"],
        ["report"],
        ["params"],
        ["dag"],
    ],
    ids=lambda a: "-".join(a),
)
@pytest.mark.parametrize("profile", ["demo", "paper"])
def test_every_command_ends_in_one_line(offline_repo, server, capsys, profile, argv):
    (offline_repo / "params.yaml").write_text(
        yaml.safe_dump(_profile(profile, server.base_url)), encoding="utf-8"
    )
    try:
        code = cli(argv)
    except SystemExit as e:
        code = e.code
    err = capsys.readouterr().err
    assert "Traceback" not in err, err[-3000:]
    assert code in (0, 2), (code, err[-2000:])
    if code:
        assert len([line for line in err.splitlines() if line.strip()]) == 1, err[-3000:]


@pytest.mark.parametrize(
    ("stage", "argv", "named"),
    [
        ("control_tune", ["--arm", "bogus", "--seed", "0"], "--arm 'bogus'"),
        ("bakeoff_tune", ["--method", "bogus", "--seed", "0"], "--method 'bogus'"),
    ],
)
def test_an_unknown_matrix_option_ends_in_one_line_naming_it(stage, argv, named, tmp_path):
    out = subprocess.run(
        [sys.executable, str(REPO / "stages" / f"{stage}.py"), *argv],
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 2 and "Traceback" not in out.stderr
    assert named in out.stderr.strip().splitlines()[-1]
