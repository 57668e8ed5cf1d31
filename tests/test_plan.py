"""`vital plan`: prices the sample the params in force would draw (never a leftover one), batch at half rate,
and estimates GPU work; every dry run ends in a table or one line."""

from __future__ import annotations

import hashlib

import pytest
import yaml

from tests import paper_world
from vital.cli import main
from vital.llava.testing import tiny_base
from vital.params import load_params
from vital.paths import Paths
from vital.plan import lock_current, plan

PRICE = {"input_per_1m": 2.5, "output_per_1m": 10.0}


def _params(root, per_domain: int, mode: str = "online", **extra) -> dict:
    client = {"base_url": "http://127.0.0.1:9/v1", "api_key_env": "VITAL_PLAN_TEST_KEY"}
    llm = {
        "backend": "openai",
        "model": "gpt-4o",
        "mode": mode,
        "client": client,
        "prices": {"gpt-4o": PRICE},
    }
    p = {
        "sample": {"per_domain": per_domain, "domains": list(paper_world.DOMAINS)},
        "generate": llm | {"candidates": 2, "demos_per_prompt": 1, "max_tokens": 100},
        "judge": llm | {"max_tokens": 50},
        "tune": {"base": "checkpoints/llava", "keep": 40, "subsets": ["top"], "seeds": [0], "batch_size": 2},
        "curate": {"keep": [40]},
        "embed": {"backbone": "checkpoints/clip"},
        "chat_eval": {"compare": ["top-s0", "base"]},
        **extra,
    }
    (root / "params.yaml").write_text(yaml.safe_dump(p), encoding="utf-8")
    return p


@pytest.fixture(scope="module")
def repo(tmp_path_factory):
    root = tmp_path_factory.mktemp("plan")
    paper_world.corpus(root / "data")
    tiny_base(root / "checkpoints" / "llava", width=32, image_size=32, patch_size=8)
    paper_world.clip_checkpoint(root / "checkpoints" / "clip")
    return root


def _plan(root, **kw) -> dict:
    _params(root, **kw)
    return plan(load_params(root / "params.yaml"), root / "params.yaml", Paths(root))


def _md5(path) -> str:
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_a_leftover_sample_of_other_params_is_never_priced(repo):
    # the demo's leftover: one figure, nothing in dvc.lock says it is these params' sample
    leftover = Paths(repo).sample
    leftover.parent.mkdir(parents=True, exist_ok=True)
    first = (repo / "data" / "corpus" / "figures.jsonl").read_text().splitlines()[0]
    leftover.write_text(first + "\n")
    p = _plan(repo, per_domain=3)
    gen = p["requests"][0]
    assert p["sample"].startswith("recomputed") and gen["figures"] == 6
    assert gen["requests_to_send"] == 6 * 2  # every sampled figure x generate.candidates
    assert leftover.read_text() == first + "\n"  # the workspace is not touched
    judge = p["requests"][1]
    assert judge["requests_to_send"] == 12 and judge["candidates"] == 12
    assert judge["estimated_input_tokens"] > 12 * 2 * 100 // 2  # answers bounded by generate.max_tokens


def test_a_current_sample_is_used_as_it_is(repo):
    p = _params(repo, per_domain=2)
    sample = Paths(repo).sample
    figures = (repo / "data" / "corpus" / "figures.jsonl").read_text().splitlines()
    sample.write_text("\n".join([figures[0], figures[4]]) + "\n")  # what `dvc repro sample` wrote, say
    lock = {
        "stages": {
            "sample": {
                "params": {"params.yaml": {"sample": p["sample"]}},
                "deps": [
                    {"path": "data/corpus/figures.jsonl", "md5": _md5(repo / "data/corpus/figures.jsonl")}
                ],
                "outs": [{"path": "artifacts/sample.jsonl", "md5": _md5(sample)}],
            }
        }
    }
    (repo / "dvc.lock").write_text(yaml.safe_dump(lock))
    try:
        assert lock_current("sample", repo / "params.yaml", repo, ("artifacts/sample.jsonl",)) == (
            True,
            "current",
        )
        got = plan(load_params(repo / "params.yaml"), repo / "params.yaml", Paths(repo))
        assert got["sample"].endswith("(current)") and got["requests"][0]["figures"] == 2
        _params(repo, per_domain=3)  # the params changed: the lock no longer vouches for the sample
        current, why = lock_current("sample", repo / "params.yaml", repo, ("artifacts/sample.jsonl",))
        assert not current and "other params (sample)" in why
    finally:
        (repo / "dvc.lock").unlink()


def test_batch_mode_is_priced_at_half_the_online_rate(repo):
    online, batch = _plan(repo, per_domain=2), _plan(repo, per_domain=2, mode="batch")
    for a, b in zip(online["requests"][:2], batch["requests"][:2], strict=True):
        assert b["estimated_input_tokens"] == a["estimated_input_tokens"] > 0
        assert b["estimated_cost_usd_max"] == pytest.approx(a["estimated_cost_usd_max"] / 2, abs=1e-4)
        assert b["price_listed"] == PRICE and b["price"] == {k: v / 2 for k, v in PRICE.items()}


def test_the_tune_rows_count_the_examples_curate_will_keep(repo):
    every = _plan(repo, per_domain=3, curate={"keep": [40], "policy": "all"})
    tune = next(r for r in every["gpu_work"] if r["stage"] == "tune")
    assert tune["examples"] == 5  # 40% of all 12 candidates (6 figures x 2), rounded as curate rounds


def test_gpu_rows_come_from_the_checkpoints(repo):
    p = _plan(repo, per_domain=3)
    rows = {r["stage"]: r for r in p["gpu_work"]}
    tune = rows["tune"]
    # curate's own cut: best_per_figure keeps 40% of the 6 figures' best candidates, rounded
    assert tune["examples"] == 2 and tune["runs"] == 1
    assert (
        tune["memory_gib"] > 0
        and tune["gpu_hours"] > 0
        and set(tune["memory_terms_gib"])
        == {
            "weights",
            "gradients",
            "optimizer",
            "activations",
        }
    )
    assert rows["embed"]["gpu_hours"] > 0 and rows["embed"]["examples"] == 12


def test_cli_plan_prints_a_table_and_dry_runs_end_in_one_line(repo, monkeypatch, capsys):
    monkeypatch.chdir(repo)
    _params(
        repo, per_domain=2, chat_eval={"backend": "openai", "model": "gpt-4o", "compare": ["top-s0", "base"]}
    )
    assert main(["plan"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("vital plan: params.yaml; sample: recomputed")
    assert "generate   online" in out and "GiB/GPU" in out
    # chat_eval before evaluate ran: priced at evaluate.max_new_tokens, no FileNotFoundError
    assert main(["chat_eval", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert (
        err.startswith("vital chat_eval --dry-run: set 'demo': question file not found") and "\n" not in err
    )
    # judge before generate: one line naming the missing file
    assert main(["judge", "--dry-run"]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("vital judge --dry-run: ") and "candidates.jsonl" in err and "\n" not in err
    # a stage whose inputs are not there yet is a row saying so, not the end of the plan
    assert "chat_eval: not priced: set 'demo': question file not found" in out
