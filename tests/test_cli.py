import json
import subprocess
import sys
from pathlib import Path

import yaml

from vital.cli import main

REPO = Path(__file__).resolve().parents[1]


def test_params_prints_resolved_values(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["params"]) == 0
    assert json.loads(capsys.readouterr().out)["selector"]["human_weight"] == "auto"


def test_params_typo_exits_2_naming_the_key(tmp_path, capsys):
    f = tmp_path / "params.yaml"
    f.write_text(yaml.safe_dump({"curate": {"kepe": [0.1]}}))
    assert main(["--params", str(f), "params"]) == 2
    assert "curate.kepe: unknown key" in capsys.readouterr().err


def test_unknown_stage_lists_the_known_ones(capsys, monkeypatch):
    monkeypatch.chdir(REPO)
    assert main(["run", "nope"]) == 2
    err = capsys.readouterr().err
    assert "unknown stage 'nope'" in err and "generate" in err


def test_dry_run_of_the_offline_generator_costs_nothing(monkeypatch, capsys):
    monkeypatch.chdir(REPO)
    assert main(["generate", "--dry-run"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["requests"] == 0 and out["estimated_cost_usd"] == 0


def test_stage_script_reports_a_bad_param_in_one_line(tmp_path):
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["sample"]["per_domain"] = 0
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(params))
    out = subprocess.run(
        [sys.executable, str(REPO / "stages" / "sample.py")], cwd=tmp_path, capture_output=True, text=True
    )
    assert out.returncode == 2
    assert "sample.per_domain" in out.stderr and "Traceback" not in out.stderr
