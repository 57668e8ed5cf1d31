"""Instruction tuning through the from_pretrained path: LoRA/QLoRA/full, frozen vision, checkpoints, resume."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoProcessor, LlavaForConditionalGeneration

from vital.artifacts.curated import read_curated
from vital.llava import tune
from vital.llava.testing import side_records, tiny_base, write_llava_json
from vital.llava.trainer import latest_checkpoint
from vital.params import ParamsError, TuneParams

REPO = Path(__file__).resolve().parents[1]
STEPS = 8


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("tune")
    tiny_base(root / "base", width=32, patch_size=16)
    records = side_records(root / "corpus", 24, size=64)
    records.append(
        {"id": "no-image-file", "image": "images/missing.png", "conversations": records[0]["conversations"]}
    )
    records.append(
        {
            "id": "no-placeholder",
            "image": records[0]["image"],
            "conversations": [{"from": "human", "value": "Which side?"}, {"from": "gpt", "value": "left"}],
        }
    )
    write_llava_json(root / "data.json", records)
    return root


def _params(**kw) -> TuneParams:
    base = {
        "method": "lora",
        "max_steps": STEPS,
        "batch_size": 6,
        "checkpoint_every": 3,
        "lr": 5e-3,
        "seed": 7,
    }
    return TuneParams(**{**base, **kw})


def _tune(world, name, tp, on_step=None):
    return tune.run(
        base=world / "base",
        data=world / "data.json",
        image_root=world / "corpus",
        out=world / name,
        tp=tp,
        checkpoint_dir=world / f"ckpt-{name}",
        metrics_path=world / f"{name}.json",
        curve_path=world / f"{name}.csv",
        on_step=on_step,
    )


def _weights(path):
    return load_file(str(path / "model.safetensors"))


def _assert_same_run(world, name, ref):
    """Run ``name`` logged the same loss at every step and ended with the same weights as run ``ref``.

    Tolerance: 1e-6 absolute on each step's loss and on every weight (CPU runs are bit-identical).
    """
    curve = [tuple(r.split(",")) for r in (world / f"{name}.csv").read_text().splitlines()[1:]]
    expected = [tuple(r.split(",")) for r in (world / f"{ref}.csv").read_text().splitlines()[1:]]
    assert [s for s, _ in curve] == [s for s, _ in expected]
    for (_, a), (_, b) in zip(curve, expected, strict=True):
        assert abs(float(a) - float(b)) <= 1e-6
    got, want = _weights(world / name), _weights(world / ref)
    assert got.keys() == want.keys()
    for k in got:
        torch.testing.assert_close(got[k], want[k], atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def lora_run(world):
    return _tune(world, "lora", _params())


def test_lora_tune_writes_complete_checkpoint(world, lora_run):
    m = lora_run
    assert m["examples"] == 24 and m["dropped"] == 2
    assert m["dropped_by_reason"] == {
        "first human turn has no <image> placeholder": 1,
        "image file missing": 1,
    }
    assert m["steps"] == STEPS and m["final_loss"] < m["first_loss"]
    assert json.loads((world / "lora.json").read_text())["steps"] == STEPS
    assert (world / "lora.csv").read_text().splitlines()[0] == "step,loss"
    out = world / "lora"
    assert (out / "adapter" / "adapter_config.json").is_file()
    model = LlavaForConditionalGeneration.from_pretrained(out)
    processor = AutoProcessor.from_pretrained(out)
    assert not any("lora" in k for k in model.state_dict())
    # Frozen vision tower: byte-identical to the base; language model and projector changed.
    base, tuned = _weights(world / "base"), _weights(out)
    vision = [k for k in base if "vision_tower" in k]
    assert vision and all(torch.equal(base[k], tuned[k]) for k in vision)
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert any("multi_modal_projector" in k for k in changed)
    assert any("self_attn.q_proj" in k for k in changed)
    assert (
        processor.apply_chat_template(
            [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "q"}]}],
            add_generation_prompt=True,
        )
        == "USER: <image>\nq ASSISTANT:"
    )
    assert not (world / "ckpt-lora").exists()  # checkpoints are removed after success


def test_full_tune_with_unfrozen_vision_changes_vision(world):
    m = _tune(world, "full", _params(method="full", freeze_vision=False, max_steps=2))
    assert m["trainable_params"] == m["total_params"]
    base, tuned = _weights(world / "base"), _weights(world / "full")
    assert any(not torch.equal(base[k], tuned[k]) for k in base if "vision_tower" in k)
    assert not (world / "full" / "adapter").exists()


class Killed(RuntimeError):
    pass


def test_killed_tune_resumes_to_the_same_result(world, lora_run):
    """Kill after step 5 (checkpoint at 3), resume: same curve and weights as the uninterrupted run."""

    def kill(step, loss):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        _tune(world, "resumed", _params(), on_step=kill)
    ckpt = latest_checkpoint(world / "ckpt-resumed")
    assert ckpt is not None and ckpt.name == "step-3"
    # The checkpoint holds the trainable tensors only (adapter, projector, modules_to_save), not the frozen base.
    saved = load_file(str(ckpt / "model.safetensors"))
    trained = ("lora_", "multi_modal_projector", "embed_tokens", "lm_head")
    assert saved and all(any(t in k for t in trained) for k in saved)
    assert not any("layers.0.self_attn.q_proj.base_layer" in k for k in saved)
    m = _tune(world, "resumed", _params())
    assert m["resumed_from"] == 3 and m["steps"] == STEPS
    _assert_same_run(world, "resumed", "lora")


def test_sigkilled_tune_process_resumes_to_the_same_result(world, lora_run):
    """SIGKILL a tune running in another process after its first checkpoint; rerun: same as unbroken."""
    name, ckpt_dir, log = "sigkilled", world / "ckpt-sigkilled", world / "sigkilled.log"
    # This checkout's vital, not whichever one is installed.
    path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    # the child on as many threads as this process's reference run: a float reduction split another way
    # differs in the last digits
    threads = str(torch.get_num_threads())
    env = {**os.environ, "PYTHONPATH": path, "VITAL_PROGRESS": "off", "OMP_NUM_THREADS": threads}
    env["VITAL_THREADS"] = threads
    cmd = [sys.executable, str(REPO / "tests" / "tune_child.py"), str(world), name, "1.0"]
    with log.open("w") as out:  # a file, not a pipe: a full pipe would stall the child
        child = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=out, stderr=out)
    try:
        deadline = time.monotonic() + 300
        while latest_checkpoint(ckpt_dir) is None:
            assert child.poll() is None, f"child exited with {child.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, "the child wrote no checkpoint in 300 s"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        code = child.wait(timeout=60)
        assert code == -signal.SIGKILL, (
            f"exit {code}, not killed (finished first?):\n{log.read_text()[-4000:]}"
        )
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    assert not (world / name).exists() and not (world / f"{name}.json").exists()
    step = int(latest_checkpoint(ckpt_dir).name.split("-")[1])
    assert step in (3, 6) and step < STEPS
    # What a kill during a save leaves (state file included): never resumed, removed on restart.
    stray = ckpt_dir / ".tmp-step-9"
    stray.mkdir()
    (stray / "trainer_state.json").write_text(json.dumps({"step": 9}))
    (stray / "model.safetensors").write_bytes(b"half a tensor")
    strays = []
    m = _tune(world, name, _params(), on_step=lambda s, _: strays.extend(ckpt_dir.glob(".tmp-step-*")))
    assert m["resumed_from"] == step and m["steps"] == STEPS
    assert strays == []
    _assert_same_run(world, name, "lora")


def test_stale_checkpoint_of_other_params_is_not_resumed(world):
    def kill(step, loss):
        if step == 3:
            raise Killed

    with pytest.raises(Killed):
        _tune(world, "stale", _params(max_steps=4), on_step=kill)
    assert latest_checkpoint(world / "ckpt-stale") is not None
    m = _tune(world, "stale", _params(max_steps=4, lr=1e-3))
    assert m["resumed_from"] == 0


def test_bad_inputs_name_the_problem(world, tmp_path):
    with pytest.raises(FileNotFoundError, match="curated set not found"):
        read_curated(tmp_path / "none.json")
    (tmp_path / "obj.json").write_text('{"id": 1}')
    with pytest.raises(ValueError, match="expected a JSON list"):
        read_curated(tmp_path / "obj.json")
    (tmp_path / "mixed.json").write_text('[{"id": 1}, 2]')
    with pytest.raises(ValueError, match=r"mixed.json: records \[1\] are not JSON objects"):
        read_curated(tmp_path / "mixed.json")
    with pytest.raises(ValueError, match="matched no module"):
        model = LlavaForConditionalGeneration.from_pretrained(world / "base")
        tune.prepare_model(model, _params(lora={"target_modules": ["nope_proj"]}))
    with pytest.raises(ValueError, match=r"tune.lora.modules_to_save=\['embed_token'\]"):
        model = LlavaForConditionalGeneration.from_pretrained(world / "base")
        tune.prepare_model(model, _params(lora={"modules_to_save": ["embed_token"]}))
    model = LlavaForConditionalGeneration.from_pretrained(world / "base")  # a dotted suffix names one module
    peft_model = tune.prepare_model(model, _params(lora={"modules_to_save": ["layers.0.input_layernorm"]}))
    assert any("layers.0.input_layernorm.modules_to_save" in n for n, _ in peft_model.named_parameters())


def test_modules_to_save_train_in_full_and_reach_the_merged_model(world, lora_run):
    base = _weights(world / "base")
    tuned = _weights(world / "lora")
    emb = next(k for k in tuned if k.endswith("embed_tokens.weight"))
    assert not torch.equal(base[emb], tuned[emb])  # trained in full and merged into the saved checkpoint
    frozen = _params(lora={"modules_to_save": []})
    model = tune.prepare_model(LlavaForConditionalGeneration.from_pretrained(world / "base"), frozen)
    assert not any(p.requires_grad for n, p in model.named_parameters() if "embed_tokens" in n)


def test_lora_targets_only_the_language_model_when_vision_is_frozen():
    pattern = tune.lora_target_pattern(["q_proj", "v_proj"], freeze_vision=True)
    import re

    assert re.fullmatch(pattern, "model.language_model.layers.0.self_attn.q_proj")
    assert not re.fullmatch(pattern, "model.vision_tower.vision_model.encoder.layers.0.self_attn.q_proj")
    assert re.fullmatch(
        tune.lora_target_pattern(["q_proj"], freeze_vision=False),
        "model.vision_tower.encoder.layers.0.self_attn.q_proj",
    )


def _spy_on_loaded_model(monkeypatch) -> dict[str, type]:
    """Module name -> class of the model ``tune.run`` loads, recorded before it is wrapped."""
    seen: dict[str, type] = {}
    prepare = tune.prepare_model

    def spy(model, tp):
        seen.update((n, type(m)) for n, m in model.named_modules())
        return prepare(model, tp)

    monkeypatch.setattr(tune, "prepare_model", spy)
    return seen


@pytest.fixture(scope="module")
def qlora_run(world):
    with pytest.MonkeyPatch.context() as mp:
        layers = _spy_on_loaded_model(mp)
        return _tune(world, "qlora", _params(method="qlora")), layers


def test_qlora_tunes_a_4bit_language_model_and_saves_a_merged_checkpoint(world, qlora_run, lora_run):
    import bitsandbytes as bnb

    assert torch.cuda.is_available() or tune._bnb_4bit_runs_on_cpu()
    m, layers = qlora_run
    assert m["method"] == "qlora" and m["steps"] == STEPS
    # The LLM's linear layers are 4-bit; the vision tower, projector and lm_head are not.
    llm = [n for n in layers if ".language_model." in n and n.endswith("_proj")]
    assert len(llm) == 14 and all(layers[n] is bnb.nn.Linear4bit for n in llm)
    full = [n for n in layers if "vision_tower" in n or "multi_modal_projector" in n or n == "lm_head"]
    linear = [n for n in full if issubclass(layers[n], torch.nn.Linear)]
    assert linear and all(layers[n] is torch.nn.Linear for n in linear)
    # 4-bit weights count at their real size: same totals as LoRA on the unquantised model.
    for key in ("trainable_params", "total_params"):
        assert m[key] == lora_run[key]
    losses = [float(r.split(",")[1]) for r in (world / "qlora.csv").read_text().splitlines()[1:]]
    assert m["final_loss"] < m["first_loss"] and losses[-1] < losses[0]
    out = world / "qlora"
    assert (out / "adapter" / "adapter_config.json").is_file()
    # The deliverable is the adapter merged into the unquantised base (load_dtype), not a 4-bit model.
    model = LlavaForConditionalGeneration.from_pretrained(out)
    assert getattr(model.config, "quantization_config", None) is None
    assert not any(isinstance(x, bnb.nn.Linear4bit) for x in model.modules())
    base, tuned = _weights(world / "base"), _weights(out)
    assert tuned.keys() == base.keys() and all(v.dtype == torch.float32 for v in tuned.values())
    vision = [k for k in base if "vision_tower" in k]
    assert vision and all(torch.equal(base[k], tuned[k]) for k in vision)
    changed = [k for k in base if not torch.equal(base[k], tuned[k])]
    assert any("multi_modal_projector" in k for k in changed)
    assert any("self_attn.q_proj" in k for k in changed)


def test_killed_qlora_tune_resumes_to_the_same_result(world, qlora_run):
    def kill(step, loss):
        if step == 5:
            raise Killed

    with pytest.raises(Killed):
        _tune(world, "qlora-resumed", _params(method="qlora"), on_step=kill)
    m = _tune(world, "qlora-resumed", _params(method="qlora"))
    assert m["resumed_from"] == 3 and m["steps"] == STEPS
    _assert_same_run(world, "qlora-resumed", "qlora")


def test_qlora_configuration_errors_come_before_any_loading(world, monkeypatch):
    def no_loading(*a, **kw):
        raise AssertionError("the model was loaded before the configuration was checked")

    monkeypatch.setattr(tune, "load_llava", no_loading)
    monkeypatch.setattr(tune, "read_curated", no_loading)

    def fails(match):
        with pytest.raises(ParamsError, match=match):
            _tune(world, "qlora-error", _params(method="qlora"))

    monkeypatch.setitem(sys.modules, "bitsandbytes", None)  # makes `import bitsandbytes` fail
    fails(r"tune\.method=qlora needs bitsandbytes, which is not installed: pip install 'vital\[qlora\]'")
    fake = types.ModuleType("bitsandbytes")
    monkeypatch.setitem(sys.modules, "bitsandbytes", fake)
    fake.__version__ = "0.45.5"
    fails(r"tune\.method=qlora needs bitsandbytes>=0\.46\.1 \(found 0\.45\.5\)")
    fake.__version__ = "0.50.2"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(tune, "_bnb_4bit_runs_on_cpu", lambda: False)
    fails(r"tune\.method=qlora: no CUDA device, and bitsandbytes 0\.50\.2 cannot run 4-bit layers on the CPU")
    monkeypatch.setenv("ACCELERATE_DEEPSPEED_ZERO_STAGE", "3")
    fails(r"tune\.method=qlora does not run under DeepSpeed ZeRO-3")
