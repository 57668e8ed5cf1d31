"""Training as LLaVA-1.5 / LLaVA-Med train: pad-to-square, the projector's own learning rate, float32 master
weights under bf16, gradient checkpointing, and LLaVA-Med's full fine-tune in the paper profile."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from transformers import AutoProcessor

from vital.llava import tune
from vital.llava.build import load_llava, set_image_aspect_ratio
from vital.llava.conversation import ConversationDataset
from vital.llava.testing import side_records, tiny_base, write_llava_json
from vital.llava.trainer import LoopConfig, param_groups
from vital.params import FinetuneParams, ParamsError, TuneParams, load_params

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("fidelity")
    tiny_base(root / "base", width=32, patch_size=16)
    write_llava_json(root / "data.json", side_records(root / "corpus", 12, size=64))
    return root


def _params(**kw) -> TuneParams:
    return TuneParams(**{"method": "lora", "max_steps": 2, "batch_size": 6, "lr": 5e-3, "seed": 3, **kw})


def _tune(world, name, tp):
    return tune.run(
        base=world / "base",
        data=world / "data.json",
        image_root=world / "corpus",
        out=world / name,
        tp=tp,
        checkpoint_dir=world / f"ckpt-{name}",
        curve_path=world / f"{name}.csv",
    )


def _expand_to_square(image: Image.Image, colour: tuple[int, int, int]) -> Image.Image:
    """LLaVA's expand2square, written out: the image centred on a square of ``colour``."""
    w, h = image.size
    side = max(w, h)
    square = Image.new("RGB", (side, side), colour)
    square.paste(image, ((side - w) // 2, (side - h) // 2))
    return square


def test_pad_is_the_default_and_pads_with_the_image_mean(world, tmp_path):
    assert TuneParams().image_aspect_ratio == FinetuneParams().image_aspect_ratio == "pad"
    _, processor = load_llava(world / "base")
    cropping = processor.image_processor
    wide = Image.fromarray(np.random.default_rng(0).integers(0, 255, (30, 64, 3), dtype=np.uint8))
    wide.save(tmp_path / "wide.png")
    mean = tuple(int(x * 255) for x in cropping.image_mean)
    by_hand = cropping(images=[_expand_to_square(wide, mean)], return_tensors="pt")["pixel_values"][0]
    cropped = cropping(images=[wide], return_tensors="pt")["pixel_values"][0]

    set_image_aspect_ratio(processor, "pad")
    record = {"id": "w", "image": "wide.png", "conversations": side_records(tmp_path, 1)[0]["conversations"]}
    dataset = ConversationDataset([record], processor, tmp_path, max_length=64)
    torch.testing.assert_close(dataset.pixels(0), by_hand, atol=0, rtol=0)
    assert not torch.equal(dataset.pixels(0), cropped)
    # A square image is unchanged by padding (the demo's figures are square).
    square = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    torch.testing.assert_close(
        processor.image_processor(images=[square], return_tensors="pt")["pixel_values"],
        cropping(images=[square], return_tensors="pt")["pixel_values"],
        atol=0,
        rtol=0,
    )
    set_image_aspect_ratio(processor, "crop")
    assert processor.image_processor.do_pad is False


def test_tuned_checkpoint_pads_at_evaluation_too(world):
    _tune(world, "padded", _params(max_steps=1))
    images = AutoProcessor.from_pretrained(world / "padded").image_processor
    assert images.do_pad is True
    _tune(world, "cropped", _params(max_steps=1, image_aspect_ratio="crop"))
    assert not getattr(AutoProcessor.from_pretrained(world / "cropped").image_processor, "do_pad", False)


def test_projector_trains_at_its_own_learning_rate(world):
    model, _ = load_llava(world / "base")
    peft_model = tune.prepare_model(model, _params())
    groups = param_groups(
        peft_model, LoopConfig(Path("x"), lr=1e-3, lr_by_name={"multi_modal_projector": 2e-5})
    )
    by_lr = {g["lr"]: g["params"] for g in groups}
    projector = {
        id(p) for n, p in peft_model.named_parameters() if "multi_modal_projector" in n and p.requires_grad
    }
    assert projector and {id(p) for p in by_lr[2e-5]} == projector
    assert by_lr[1e-3] and not projector & {id(p) for p in by_lr[1e-3]}

    m = _tune(world, "slow-projector", _params(projector_lr=1e-30))
    assert m["projector_lr"] == 1e-30 and m["lr"] == 5e-3
    base, tuned = (
        load_file(str(world / "base/model.safetensors")),
        load_file(str(world / "slow-projector/model.safetensors")),
    )
    projector_keys = [k for k in base if "multi_modal_projector" in k]
    assert projector_keys and all(torch.allclose(base[k], tuned[k], atol=1e-12) for k in projector_keys)
    assert any(not torch.equal(base[k], tuned[k]) for k in base if "q_proj" in k)


@pytest.fixture
def fresh_accelerator():
    """accelerate keeps one mixed-precision setting per process: a bf16 run needs a state of its own."""
    from accelerate.state import AcceleratorState

    AcceleratorState._reset_state(True)
    yield
    AcceleratorState._reset_state(True)


def test_bf16_lora_keeps_float32_master_weights(world, fresh_accelerator):
    m = _tune(world, "bf16", _params(load_dtype="bfloat16", mixed_precision="bf16"))
    assert m["trainable_dtypes"] == ["float32"]
    assert m["steps"] == 2 and np.isfinite(m["final_loss"])
    model, _ = load_llava(world / "base", dtype=torch.bfloat16)
    peft_model = tune.prepare_model(model, _params(load_dtype="bfloat16", mixed_precision="bf16"))
    frozen = {p.dtype for p in peft_model.parameters() if not p.requires_grad}
    assert tune.trainable_dtypes(peft_model) == ["float32"] and frozen == {torch.bfloat16}


@pytest.mark.parametrize(
    "section, kw, match",
    [
        (
            "finetune",
            {"method": "full", "load_dtype": "bfloat16", "mixed_precision": "bf16"},
            "finetune.load_dtype",
        ),
        ("tune", {"load_dtype": "bfloat16", "mixed_precision": "no"}, "tune.mixed_precision=bf16"),
        ("tune", {"load_dtype": "float16", "mixed_precision": "bf16"}, "tune.mixed_precision=fp16"),
    ],
)
def test_half_precision_without_master_weights_is_refused_naming_the_param(section, kw, match, monkeypatch):
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED", raising=False)
    with pytest.raises(ParamsError, match=match):
        tune.check_method(_params(**kw), section)


def test_half_precision_full_is_left_to_deepspeed_and_qlora_needs_no_autocast(monkeypatch):
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    tune.check_method(_params(method="full", load_dtype="bfloat16", mixed_precision="bf16"), "finetune")
    monkeypatch.delenv("ACCELERATE_USE_DEEPSPEED")
    tune.check_precision(_params(method="qlora", load_dtype="bfloat16", mixed_precision="no"), "tune")


@pytest.mark.parametrize("method", ["lora", "full"])
def test_gradient_checkpointing_is_a_param_and_changes_no_result(world, method):
    model, _ = load_llava(world / "base")
    tune.prepare_model(model, _params(method=method, gradient_checkpointing=True))
    assert model.model.language_model.gradient_checkpointing
    plain, _ = load_llava(world / "base")
    tune.prepare_model(plain, _params(method=method))
    assert not plain.model.language_model.gradient_checkpointing

    with_gc = _tune(world, f"gc-{method}", _params(method=method, gradient_checkpointing=True))
    without = _tune(world, f"nogc-{method}", _params(method=method))
    assert with_gc["gradient_checkpointing"] and not without["gradient_checkpointing"]
    curve = (world / f"gc-{method}.csv").read_text().splitlines()[1:]
    expected = (world / f"nogc-{method}.csv").read_text().splitlines()[1:]
    for a, b in zip(curve, expected, strict=True):
        assert abs(float(a.split(",")[1]) - float(b.split(",")[1])) <= 1e-5


def test_paper_profile_trains_as_llava_and_fine_tunes_as_llava_med():
    p = load_params(REPO / "params-paper.yaml")
    assert (p.tune.projector_lr, p.tune.gradient_checkpointing, p.tune.image_aspect_ratio) == (
        2e-5,
        True,
        "pad",
    )
    f = p.finetune
    assert (f.method, f.lr, f.epochs, f.gradient_checkpointing, f.image_aspect_ratio) == (
        "full",
        2e-5,
        3,
        True,
        "pad",
    )
    assert f.batch_size * f.grad_accum * 8 == 128  # on the 8 processes its comment names
    loop = LoopConfig(Path("x"))
    assert (loop.warmup_ratio, loop.weight_decay) == (0.03, 0.0)
