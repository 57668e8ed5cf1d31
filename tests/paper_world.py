"""A repository for the paper profile, in real formats, with tiny stand-ins for what cannot be downloaded.

``build_repo(root, base_url)`` writes, under ``root``:

- ``data/corpus/figures.jsonl`` + ``images/``: PMC / LLaVA-Med figure records (no ``truth.jsonl``: a real
  corpus has no hidden ground truth);
- ``data/demonstrations/<domain>.json`` and one clinician's hand-written ``data/labels/dr_a.jsonl``;
- ``data/eval/``: VQA-RAD (OSF json), SLAKE (json), PathVQA (pkl) and LLaVA-Med's qa50 file, as distributed,
  at the paths of params-paper.yaml;
- ``checkpoints/clip``: a tiny open_clip model in the layout of BiomedCLIP's Hugging Face repository
  (``open_clip_config.json`` + ``open_clip_pytorch_model.bin``) standing in for ``hf-hub:microsoft/BiomedCLIP-...``;
- ``checkpoints/llava``: a tiny ``LlavaForConditionalGeneration`` + processor (``save_pretrained``) standing in
  for ``llava-hf/llava-1.5-13b-hf``;
- ``params.yaml``: params-paper.yaml with those paths, the generate/judge client pointed at ``base_url``,
  and sizes cut down to seconds on a CPU.

``content(body)`` answers the test server's chat requests: varied conversations, and judge scores that
differ between candidates (so the pairs stage finds model pairs), and chat_eval's pairwise verdicts.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import subprocess
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

REPO = Path(__file__).resolve().parents[1]
DOMAINS = ("ct_scan", "histology")
PER_DOMAIN = 4
CANDIDATES = 2
API_KEY = "sk-paper-profile-test"


def _digest(obj) -> int:
    return int(hashlib.sha256(json.dumps(obj, sort_keys=True).encode()).hexdigest()[:8], 16)


def content(body: dict) -> str:
    """The OpenAI-compatible test server's reply: a chat_eval verdict, a judge score, or a conversation."""
    text = json.dumps(body.get("messages", []))
    if "Assistant 1" in text:  # chat_eval: two scores on the first line (LLaVA-Med's review format)
        return f"{_digest(body['messages']) % 10 + 1} 8\nscored by the test server"
    if "score" in text and "rubric" in text.lower():
        return json.dumps({"score": _digest(body["messages"]) % 11, "rationale": "scored by the test server"})
    k = body.get("seed", 0) % 3
    answers = [
        "An axial CT image showing a hypodense lesion in the left lobe of the liver.",
        "A histology section with dense inflammatory infiltrate and necrosis.",
        "It is an image.",
    ]
    return json.dumps(
        {
            "conversations": [
                {"from": "human", "value": "What does the image show?"},
                {"from": "gpt", "value": answers[k]},
                {"from": "human", "value": "Is there an abnormality?"},
                {"from": "gpt", "value": ["Yes, a focal lesion.", "Yes.", "Maybe."][k]},
            ]
        }
    )


def _image(path: Path, seed: int, size: int = 48) -> None:
    rng = np.random.default_rng(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(rng.integers(0, 255, (size, size, 3), dtype=np.uint8)).save(path)


def _json(path: Path, data) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data, indent=1), encoding="utf-8")


def _jsonl(path: Path, rows) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


# ------------------------------------------------------------------ corpus, demonstrations, labels
def corpus(data: Path) -> list[dict]:
    records = []
    for d, domain in enumerate(DOMAINS):
        for i in range(PER_DOMAIN):
            pid = f"PMC{7000 + 10 * d + i}_F{i + 1}"
            image = f"images/{pid}.jpg"
            _image(data / "corpus" / image, 100 * d + i)
            side = "left" if i % 2 else "right"
            records.append(
                {
                    "pair_id": pid,
                    "pmid": str(31000000 + 10 * d + i),
                    "fig_label": f"Figure {i + 1}",
                    "fig_caption": f"{domain.replace('_', ' ')} figure {i}: a lesion on the {side} side.",
                    "in_text_mention": [{"tokens": f"As shown in Figure {i + 1}, the lesion is {side}."}],
                    "domain": {
                        name: name == domain
                        for name in ("chest_xray", "ct_scan", "mri", "histology", "gross")
                    },
                    "image": image,
                }
            )
    _jsonl(data / "corpus" / "figures.jsonl", records)
    for domain in DOMAINS:
        demo = {
            "id": f"demo-{domain}",
            "fig_caption": f"A {domain} figure with a mass.",
            "in_text_mention": [],
            "conversations": [
                {"from": "human", "value": "<image>\nWhat is shown?"},
                {"from": "gpt", "value": "A mass on the left."},
            ],
        }
        _json(data / "demonstrations" / f"{domain}.json", [demo])
    # one clinician's rankings, written by hand in data/labels/README.md's format (every figure: the
    # generate stage names candidates <pair_id>#<index>)
    labels = []
    for n, r in enumerate(records):
        order = [0, 1] if n % 3 else [1, 0]
        labels.append(
            {"pair_id": r["pair_id"], "annotator": "dr_a", "ranking": [f"{r['pair_id']}#{j}" for j in order]}
        )
    _jsonl(data / "labels" / "dr_a.jsonl", labels)
    return records


# ------------------------------------------------------------------ evaluation sets as distributed
def vqa_sets(data: Path) -> None:
    rad = data / "eval" / "vqa_rad"
    rows = []
    for q in range(6):
        name = f"synpic{100 + q // 2}.jpg"
        _image(rad / "VQA_RAD Image Folder" / name, 500 + q // 2)
        closed = q % 2 == 0
        rows.append(
            {
                "qid": q,
                "phrase_type": "freeform" if q < 2 else "test_freeform",
                "image_name": name,
                "image_organ": "CHEST",
                "question": "Is there a pneumothorax?" if closed else "Where is the mass?",
                "question_type": "PRES" if closed else "POS",
                "answer": "Yes" if q % 4 == 0 else ("No" if closed else "right lung"),
                "answer_type": "CLOSED" if closed else "OPEN",
                "qid_linked_id": str(q),
                "image_case_url": "https://medpix.nlm.nih.gov/case?id=x",
                "evaluation": "given",
                "question_rephrase": "NULL",
                "question_relation": "NULL",
                "question_frame": "NULL",
            }
        )
    _json(rad / "VQA_RAD Dataset Public.json", rows)

    slake = data / "eval" / "slake"
    _image(slake / "imgs" / "xmlab1" / "source.jpg", 600)
    base = {
        "img_id": 1,
        "img_name": "xmlab1/source.jpg",
        "location": "Lung",
        "modality": "CT",
        "base_type": "vqa",
    }
    qa = [
        ("Does the picture contain lung?", "Yes", "CLOSED", "en"),
        ("Which lung is abnormal, left or right?", "Left", "CLOSED", "en"),
        ("What organ is shown?", "Lung", "OPEN", "en"),
        ("图片中包含肺吗？", "是", "CLOSED", "zh"),
    ]
    rows = [
        base
        | {
            "qid": 100 + i,
            "question": q,
            "answer": a,
            "answer_type": t,
            "q_lang": lang,
            "content_type": "Organ",
        }
        for i, (q, a, t, lang) in enumerate(qa)
    ]
    _json(slake / "test.json", rows)
    _json(slake / "train.json", rows[:2])

    pvqa = data / "eval" / "pathvqa"
    for split in ("train", "test"):
        _image(pvqa / "images" / split / f"{split}_0001.jpg", 700 if split == "test" else 701)
        rows = [
            {"image": f"{split}_0001", "question": "Does this image show necrosis?", "answer": "yes"},
            {
                "image": f"{split}_0001",
                "question": "What does this image show?",
                "answer": "caseous necrosis",
            },
        ]
        path = pvqa / "qas" / split / f"{split}_qa.pkl"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(pickle.dumps(rows))

    chat = data / "eval" / "llava_med"
    _image(chat / "images" / "34630837_F3.jpg", 800)
    flags = {"chest_xray": False, "mri": False, "histology": False, "gross": False, "ct_scan": True}
    rows = [
        {
            "question_id": f"34630837_F3_q{i}",
            "image": "34630837_F3.jpg",
            "domain": flags,
            "type": kind,
            "fig_label": "Figure 3",
            "fig_caption": "Axial CT of the abdomen.",
            "in_text_mention": "The CT shows a liver lesion.",
            "text": text,
            "gpt4_answer": "A hypodense lesion in the liver.",
        }
        for i, (kind, text) in enumerate(
            [("conversation", "What does the CT show?"), ("detailed", "Describe it.")]
        )
    ]
    _jsonl(chat / "llava_med_eval_qa50_qa.jsonl", rows)


# ------------------------------------------------------------------ checkpoints in the hub layouts
TINY_CLIP_CFG = {
    "embed_dim": 32,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 256, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def clip_checkpoint(out: Path) -> Path:
    """A tiny open_clip CLIP saved as BiomedCLIP's hub repository is laid out: ``open_clip_config.json``
    (``model_cfg`` + ``preprocess_cfg``) and ``open_clip_pytorch_model.bin`` (a torch state dict).

    BiomedCLIP's text tower is PubMedBERT through ``hf_model_name``, which needs the hub; this one keeps
    open_clip's own text transformer and bundled tokenizer, with BiomedCLIP's 256-token context."""
    import open_clip
    import torch

    torch.manual_seed(0)
    model = open_clip.CLIP(**TINY_CLIP_CFG)
    out.mkdir(parents=True, exist_ok=True)
    torch.save(model.state_dict(), out / "open_clip_pytorch_model.bin")
    preprocess = {
        "mean": [0.48145466, 0.4578275, 0.40821073],
        "std": [0.26862954, 0.26130258, 0.27577711],
    }
    _json(out / "open_clip_config.json", {"model_cfg": TINY_CLIP_CFG, "preprocess_cfg": preprocess})
    return out


def llava_checkpoint(out: Path) -> Path:
    from vital.llava.testing import tiny_base

    return tiny_base(out, width=32, image_size=32, patch_size=8)


# ------------------------------------------------------------------ params
def paper_params(root: Path, base_url: str, clip: str, llava: str) -> dict:
    """params-paper.yaml with local checkpoints, the test server, and tiny sizes."""
    p = yaml.safe_load((REPO / "params-paper.yaml").read_text(encoding="utf-8"))
    client = {
        "base_url": base_url,
        "api_key_env": "OPENAI_API_KEY",
        "concurrency": 4,
        "rpm": 60_000,
        "tpm": 100_000_000,
        "max_retries": 2,
        "timeout_s": 10,
    }
    p["foundation"] |= {"clip": clip}
    p["align"] |= {"model": llava}
    p["sample"] |= {"per_domain": PER_DOMAIN, "domains": list(DOMAINS)}
    p["sample"]["corpus"] = {
        "format": "vital"
    }  # corpus() writes vital's figure records with the images beside
    p["fetch"] = {"enabled": False}  # the images are local here; tests/test_fetch_stage.py walks the fetch
    for stage in ("generate", "judge"):
        p[stage] |= {"mode": "online", "client": client}  # batch mode is tested in tests/test_llm_batch.py
    p["generate"] |= {"candidates": CANDIDATES, "demos_per_prompt": 1, "max_image_side": 64}
    p["embed"] |= {"backbone": clip, "batch_size": 8, "num_workers": 0, "device": "cpu"}
    p["selector"] |= {"device": "cpu", "epochs": 2, "batch_size": 8, "patience": 2, "hidden": 16}
    train = {
        "lora": p["tune"]["lora"] | {"r": 4, "alpha": 8},
        "epochs": 1,
        "max_steps": 2,
        "batch_size": 2,
        "grad_accum": 1,
        "mixed_precision": "no",  # bf16 on the CPU is slower, not different
        "load_dtype": "float32",
        "checkpoint_every": 100,
        "max_length": 256,
    }
    p["tune"] |= train | {"base": llava, "subsets": ["top", "random"], "seeds": [0]}
    p["finetune"] |= train
    p["evaluate"] |= {
        "models": {"base": llava},
        "max_new_tokens": 4,
        "batch_size": 8,
        "device": "cpu",
        "dtype": "float32",
    }
    p["chat_eval"] |= {"client": client}
    return p


def build_repo(root: Path, base_url: str) -> dict:
    """Write the paper-profile repository under ``root``; returns its params."""
    root.mkdir(parents=True, exist_ok=True)
    for item in ("stages", "vital"):  # the code is a DVC dep: the repo holds the copy that runs
        shutil.copytree(REPO / item, root / item, ignore=shutil.ignore_patterns("__pycache__"))
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    (root / ".gitignore").write_text("/.vital/\n/mlflow.db\n/mlruns/\n__pycache__/\n")
    for cmd in (["git", "init", "-q"], ["dvc", "init", "-q"]):
        subprocess.run(cmd, cwd=root, check=True, capture_output=True)
    data = root / "data"
    corpus(data)
    vqa_sets(data)
    clip = clip_checkpoint(root / "checkpoints" / "clip")
    llava = llava_checkpoint(root / "checkpoints" / "llava")
    params = paper_params(root, base_url, str(clip.relative_to(root)), str(llava.relative_to(root)))
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False), encoding="utf-8")
    return params
