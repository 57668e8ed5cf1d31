"""A new model-API provider is two edits: its client factory and one row of its role's backend table
(vital/backends.py). The params' choices, the API client, the stage's registry, its capability flags and
its DVC deps all follow from the row."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from vital.backends import CHAT_EVAL, GENERATE, JUDGE

REPO = Path(__file__).resolve().parents[1]

FACTORY = """import os
from pathlib import Path

from openai import AsyncOpenAI


def client(cp, key, section):
    Path(os.environ["PROVIDER_LOG"]).open("a").write(section + "\\n")
    return AsyncOpenAI(api_key=key, base_url=cp.base_url, timeout=cp.timeout_s, max_retries=0)
"""

ROW = '    "compatible": Backend("vital.judge:OpenAIJudge", api=True, client="vital.compatible:client"),\n'

RUN = """import json, os, sys
from pathlib import Path

from tests.llm_world import KEY, KEY_ENV, api_params, make_world
from tests.openai_server import FakeOpenAIServer
from vital import dag, generate, judge
from vital.params import parse_params
from vital.paths import Paths
from vital.pipeline import STAGES

root = Path(sys.argv[1])
os.environ[KEY_ENV] = KEY
make_world(root)
with FakeOpenAIServer() as server:
    generate.run(api_params(server.base_url, root), Paths(root))
raw = api_params("http://127.0.0.1:1", root).model_dump(mode="json")
raw["judge"]["backend"] = "compatible"
reply = json.dumps({"score": 7, "rationale": "fine"})
with FakeOpenAIServer(content_fn=lambda body: reply) as server:
    raw["judge"]["client"]["base_url"] = server.base_url
    params = parse_params(raw)
    metrics = judge.run(params, Paths(root))
    estimate = judge.dry_run(params, Paths(root))
deps = dag.stage_deps(STAGES["judge"], params, Path(os.environ["SCRATCH"])).code
print(json.dumps({"metrics": metrics, "estimate": estimate, "deps": deps}))
"""


def test_a_judge_provider_is_two_edits(tmp_path):
    scratch = tmp_path / "scratch"
    shutil.copytree(REPO / "vital", scratch / "vital", ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copytree(REPO / "stages", scratch / "stages")
    # 1. the provider's client factory
    (scratch / "vital" / "compatible.py").write_text(FACTORY)
    # 2. its row in the judge table
    table = scratch / "vital" / "backends.py"
    text = table.read_text()
    anchor = "JUDGE: dict[str, Backend] = {\n"
    assert text.count(anchor) == 1
    table.write_text(text.replace(anchor, anchor + ROW))

    log = tmp_path / "provider.log"
    env = dict(os.environ, PYTHONPATH=f"{scratch}{os.pathsep}{REPO}", VITAL_PROGRESS="off")
    env.update(PROVIDER_LOG=str(log), SCRATCH=str(scratch))
    out = subprocess.run(
        [sys.executable, "-c", RUN, str(tmp_path / "world")],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    m = result["metrics"]
    assert m["judged"] == 8 and m["failed"] == 0 and m["score_mean"] == 7
    assert m["requests_sent"] == 8  # through the new provider's client, cached for the dry run after it
    assert log.read_text().splitlines()[0] == "judge"
    assert result["estimate"]["backend"] == "compatible" and result["estimate"]["cached"] == 8
    assert "vital/compatible.py" in result["deps"]  # its client is a DVC dep of the stage that chose it


def test_every_api_backend_names_a_client_and_no_other_does():
    for table in (GENERATE, JUDGE, CHAT_EVAL):
        for name, backend in table.items():
            assert bool(backend.client) == backend.api, name


def test_every_backend_implements_its_roles_protocol():
    from vital.chat_eval import ChatJudge
    from vital.generate import Generator
    from vital.judge import Judge

    for table, role in ((GENERATE, Generator), (JUDGE, Judge), (CHAT_EVAL, ChatJudge)):
        wanted = [m for m in vars(role) if not m.startswith("_")]
        assert wanted, role
        for name, backend in table.items():
            cls = backend.load()
            missing = [m for m in wanted if not callable(getattr(cls, m, None))]
            assert not missing, f"{role.__name__} backend {name!r} ({backend.target}) lacks {missing}"
