import re
from pathlib import Path

import pytest
import yaml

from vital.params import Params, ParamsError, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def test_repository_params_file_is_valid():
    params = load_params(REPO / "params.yaml")
    assert params.selector.human_weight == "auto"


def test_misspelled_key_is_named():
    with pytest.raises(ParamsError, match=r"selector\.human_wieght: unknown key"):
        parse_params({"selector": {"human_wieght": 10}})


def test_out_of_range_value_is_named_with_the_value():
    with pytest.raises(ParamsError, match=r"selector\.human_weight: .*must be >= 0 or auto \(got -1\)"):
        parse_params({"selector": {"human_weight": -1}})
    assert parse_params({"selector": {"human_weight": "auto"}}).selector.human_weight == "auto"
    with pytest.raises(ParamsError, match=r"selector\.human_weight"):
        parse_params({"selector": {"human_weight": "best"}})


def test_wrong_backend_is_named():
    with pytest.raises(ParamsError, match=r"generate\.backend"):
        parse_params({"generate": {"backend": "gpt5"}})


def test_generate_rounds_range_is_checked():
    with pytest.raises(ParamsError, match=r"generate: .*max_rounds \(2\) is below min_rounds \(4\)"):
        parse_params({"generate": {"min_rounds": 4, "max_rounds": 2}})


def test_tune_keep_must_be_a_curated_subset():
    with pytest.raises(ParamsError, match=r"tune\.keep=50 is not one of curate\.keep"):
        parse_params({"tune": {"keep": 50}})


def test_curate_keep_percentages_are_checked():
    with pytest.raises(ParamsError, match=r"keep\[1\]=400 must be a percentage"):
        parse_params({"curate": {"keep": [10, 400]}})


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    bad = tmp_path / "params.yaml"
    bad.write_text("selector: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(bad)


def test_empty_file_means_defaults(tmp_path):
    f = tmp_path / "params.yaml"
    f.write_text("")
    assert load_params(f) == Params()


def test_every_params_section_is_a_dvc_param_of_some_stage():
    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    declared = {
        p if isinstance(p, str) else next(iter(p)) for s in stages.values() for p in s.get("params", [])
    }
    sections = set(Params.model_fields) - {"world"}  # world feeds data.dvc, not a stage
    assert sections <= {d.split(".")[0] for d in declared}


def test_params_yaml_is_the_demo_profile_and_the_code_defaults():
    # one source of truth: the demo profile in params.yaml is exactly the defaults in vital/params.py
    assert load_params(REPO / "params.yaml") == Params()


def test_paper_profile_is_valid_and_names_the_real_backends():
    params = load_params(REPO / "params-paper.yaml")
    assert params.generate.backend == "openai" and params.labels.backend == "files"
    assert params.embed.backbone.startswith("hf-hub:microsoft/BiomedCLIP")
    assert params.tune.base == "llava-hf/llava-1.5-13b-hf"
    # dvc.yaml templates these keys, so the file must spell them out
    raw = yaml.safe_load((REPO / "params-paper.yaml").read_text())
    assert {"keep", "subsets", "seeds"} <= set(raw["tune"])


def test_unquoted_no_from_dvc_exp_rewrite_means_no_mixed_precision():
    # `dvc exp run -S` rewrites params.yaml; `mixed_precision: no` then loads as YAML false
    assert parse_params(yaml.safe_load("tune:\n  mixed_precision: no\n")).tune.mixed_precision == "no"


def test_backend_registries_match_the_params_choices():
    """Every backend a params Literal allows is registered, and every registered one can be chosen."""
    import typing

    from vital import chat_eval, foundation, generate, judge, labels
    from vital.params import ChatEvalParams, FoundationParams, GenerateParams, JudgeParams, LabelsParams

    for section, registry in (
        (GenerateParams, generate.GENERATORS),
        (JudgeParams, judge.JUDGES),
        (LabelsParams, labels.BACKENDS),
        (ChatEvalParams, chat_eval.BACKENDS),
        (FoundationParams, foundation.BACKENDS),
    ):
        allowed = set(typing.get_args(section.model_fields["backend"].annotation))
        assert allowed == set(registry), f"{section.__name__}.backend {sorted(allowed)} vs {sorted(registry)}"
        for name, backend in registry.items():
            assert callable(backend.load()), f"{section.__name__}: {name} -> {backend.target} does not load"


def test_bakeoff_methods_and_quality_are_the_registries_and_checked_at_load():
    """bakeoff.methods and bakeoff.quality allow exactly the registered names; a misspelt one, or a method list
    without random, fails when params load (`vital params`), naming the key, not when the stage runs."""
    import typing

    from vital.bakeoff.methods import METHODS
    from vital.bakeoff.quality import QUALITY
    from vital.params import BakeoffMethod, BakeoffParams, BakeoffQuality

    assert set(typing.get_args(BakeoffMethod)) == set(METHODS)
    assert set(typing.get_args(BakeoffQuality)) == set(QUALITY)
    assert typing.get_args(BakeoffParams.model_fields["quality"].annotation) == typing.get_args(
        BakeoffQuality
    )
    for raw, key in (
        (
            {"methods": ["random", "lenght"], "downstream_methods": ["random"]},
            r"bakeoff\.methods\.1: .*'lenght'",
        ),
        ({"downstream_methods": ["random", "selectr"]}, r"bakeoff\.downstream_methods\.1: .*'selectr'"),
        ({"quality": "truht"}, r"bakeoff\.quality: .*'truht'"),
        ({"methods": ["length"], "downstream_methods": ["length"]}, r"bakeoff: .*must include random"),
    ):
        with pytest.raises(ParamsError, match=key):
            parse_params({"bakeoff": raw}, "params.yaml")


def test_api_flag_marks_exactly_the_client_backends_of_every_model_facing_role():
    from vital import chat_eval, generate, judge
    from vital.llm.client import CLIENT_BACKENDS

    for role, registry in (
        ("generate", generate.GENERATORS),
        ("judge", judge.JUDGES),
        ("chat_eval", chat_eval.BACKENDS),
    ):
        assert {n for n, b in registry.items() if b.api} <= set(CLIENT_BACKENDS), role
        assert {n for n, b in registry.items() if not b.api}.isdisjoint(CLIENT_BACKENDS), role


def test_every_unknown_name_error_has_one_wording():
    from vital.bakeoff.methods import check_methods
    from vital.llm.client import make_client
    from vital.params import ClientParams
    from vital.registry import choose

    wording = r"^(params\.yaml: invalid parameters\n  )?{key}: unknown {name}; choose one of \[.*\]$"
    errors = []
    for call in (
        lambda: parse_params({"judge": {"backend": "claude"}}),
        lambda: choose({"heuristic": None}, "claude", "judge.backend"),
        lambda: make_client("claude", ClientParams(), "judge"),
        lambda: check_methods(["random", "claude"]),
    ):
        with pytest.raises(ValueError) as e:
            call()
        errors.append(str(e.value))
    keys = ["judge.backend", "judge.backend", "judge.backend", "bakeoff.methods"]
    names = ["'claude'", "'claude'", "'claude'", r"\['claude'\]"]
    for text, key, name in zip(errors, keys, names, strict=True):
        assert re.match(wording.format(key=re.escape(key), name=name), text), text
