"""Typed pipeline parameters, validated when a stage starts.

``params.yaml`` has one section per stage. Every section is a pydantic model with
``extra="forbid"``, so a misspelled key or an out-of-range value fails at load with a
message naming the dotted key (e.g. ``selector.human_weight``).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from vital.backends import CHAT_EVAL, GENERATE, JUDGE

# each model-facing role's choices are its backend table's names (vital/backends.py)
GenerateBackend = Literal[tuple(GENERATE)]
JudgeBackend = Literal[tuple(JUDGE)]
ChatEvalBackend = Literal[tuple(CHAT_EVAL)]


class Section(BaseModel):
    model_config = ConfigDict(extra="forbid", protected_namespaces=())


class ParamsError(ValueError):
    """Invalid params.yaml; the message names the file and every offending key."""


def unknown_name(param: str, name: object, choices) -> str:
    """The one wording of every unknown-name error (backend, method, scorer, Literal choice)."""
    return f"{param}: unknown {name!r}; choose one of {sorted(choices)}"


CHAT_REFERENCE = "reference"  # chat_eval's name for the reference answers; no evaluated model may take it


# ---------------------------------------------------------------- demo world (data.dvc, not a stage)
class WorldParams(Section):
    """Size and difficulty of the synthetic demo world built by ``vital world``."""

    figures: int = Field(1200, ge=10)
    vqa_figures: int = Field(200, ge=5)
    vqa_train_figures: int = Field(
        600, ge=0, description="figures of the demo VQA set's train split (LLaVA-Med's fine-tuning protocol)"
    )
    image_size: int = Field(64, ge=32, le=512)
    caption_omits_side: float = Field(0.35, ge=0, le=1, description="captions that do not state the side")
    caption_vague: float = Field(0.08, ge=0, le=1, description="captions that state no findings at all")
    lesion_rate: float = Field(0.8, ge=0, le=1, description="figures with at least one lesion")
    seed: int = 0


# ---------------------------------------------------------------- foundation / base model
class FoundationParams(Section):
    """Image/text encoders. ``demo`` pretrains a tiny CLIP on the corpus; ``pretrained`` records checkpoints;
    ``restore`` copies the demo's stored ones from data/pretrained (vital.demo.pretrained)."""

    backend: Literal["demo", "pretrained", "restore"] = "restore"
    clip: str = Field("vital-tiny-clip", description="open_clip model name, 'hf-hub:<id>' or local dir")
    clip_pretrained: str | None = Field(None, description="local checkpoint file for `clip`")
    clip_revision: str | None = Field(
        None,
        description="hub revision (branch, tag or commit) of `clip` when it is a hub id; None: main. The commit it resolves to is recorded in the metrics and MLflow",
    )
    image_size: int = Field(64, ge=16)
    embed_dim: int = Field(64, ge=8)
    width: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    patch_size: int = Field(8, ge=2)
    context_length: int = Field(64, ge=8)
    vocab_size: int = Field(2000, ge=100, description="tokenizer trained on the corpus (demo)")
    steps: int = Field(600, ge=1)
    batch_size: int = Field(64, ge=2)
    lr: float = Field(1e-3, gt=0)
    mirror_augment: bool = Field(
        True, description="flip half of each batch horizontally, swapping 'left'/'right' in its caption"
    )
    seed: int = 0


class AlignParams(Section):
    """Base LLaVA model. ``demo`` assembles a tiny LLaVA and aligns it on captions (LLaVA-Med stage 1);
    ``restore`` copies the demo's stored one from data/pretrained (vital.demo.pretrained)."""

    backend: Literal["demo", "pretrained", "restore"] = "restore"
    model: str = Field("models/base", description="hub id or local dir of a LlavaForConditionalGeneration")
    model_revision: str | None = Field(
        None,
        description="hub revision (branch, tag or commit) of `model` when it is a hub id; None: main. The commit it resolves to is recorded in the metrics and MLflow",
    )
    hidden_size: int = Field(64, ge=8)
    layers: int = Field(2, ge=1)
    heads: int = Field(4, ge=1)
    steps: int = Field(3000, ge=0)
    batch_size: int = Field(16, ge=1)
    lr: float = Field(2e-3, gt=0)
    seed: int = 0
    vision_feature_layer: int = Field(
        -1, description="vision hidden state fed to the projector (-2 = LLaVA's)"
    )
    vision_feature_select_strategy: Literal["default", "full"] = Field(
        "default", description="'default' drops the CLS token, as LLaVA-1.5"
    )
    max_length: int = Field(192, ge=16, description="tokens per caption example, image tokens included")
    trainable: Literal["projector", "projector_lm"] = Field(
        "projector_lm", description="stage-1 trains the projector (LLaVA) or also the random-init demo LM"
    )
    instructions: list[str] = Field(
        default_factory=lambda: [
            "Describe the image concisely.",
            "Provide a brief description of the given image.",
            "Write a terse but informative summary of the figure.",
            "What is shown in this image?",
        ],
        description="stage-1 prompts (LLaVA-Med style); one is drawn per caption",
    )


# ---------------------------------------------------------------- data
CorpusFormat = Literal["vital", "llava_med_fig_captions", "pmc_index"]
"""Figure-corpus readers (:data:`vital.corpus.READERS` of kind ``figures``; a test keeps them in sync)."""


class CorpusParams(Section):
    """Where the sample stage reads figure records from, and in which published format."""

    format: CorpusFormat = Field("vital", description="reader in vital.corpus.READERS")
    path: str | None = Field(
        None,
        description="corpus file or Parquet folder (relative to the repo); None = data/corpus/figures.jsonl",
    )
    images: str = Field(
        "images",
        description="image folder (relative to the corpus' folder) for records without an image path",
    )
    image_urls: str | None = Field(
        None,
        description="LLaVA-Med llava_med_image_urls.jsonl: pmc_tar_url/image_file_path joined onto the sample",
    )
    check_images: bool = Field(
        True, description="skip records whose image file is missing (off before images are fetched)"
    )
    shards: str | None = Field(
        None,
        description="index.parquet of a `vital fetch-images` run: each record's image becomes its shard "
        "ref (by pair_id); a record not in the index is skipped as image_not_fetched",
    )
    oa_file_list: str | None = Field(
        None,
        description="PMC's oa_file_list.csv: each record's license (and PMID) by its PMCID or PMID, where the "
        "record carries none; 'unknown' when found nowhere",
    )


class DiversityParams(Section):
    """The paper's optional diversity step: cluster a domain's candidates, then draw across clusters."""

    clusters: int = Field(
        0, ge=0, description="k-means clusters per domain; 0 = off (plain hash-order sample)"
    )
    pool_factor: int = Field(4, ge=1, description="candidates clustered per domain: pool_factor x per_domain")
    features: int = Field(
        256, ge=16, description="hashed caption-word features (+ 16 image features when local)"
    )
    iterations: int = Field(20, ge=1)


class SampleParams(Section):
    per_domain: int = Field(240, ge=1, description="figures drawn per domain (fewer if the domain has fewer)")
    domains: list[str] = Field(default_factory=lambda: ["chest_xray", "ct_scan", "mri", "histology", "gross"])
    seed: int = 0
    corpus: CorpusParams = Field(default_factory=CorpusParams)
    diversity: DiversityParams = Field(default_factory=DiversityParams)
    licenses: list[str] | None = Field(
        None,
        description="licenses the lab allows (e.g. ['CC0', 'CC BY']); any other record is skipped as "
        "license_not_allowed; null = keep every license, 'unknown' included",
    )

    @model_validator(mode="after")
    def _known_domains(self):
        from vital.schema import DOMAINS

        if not self.domains:
            raise ValueError("domains must name at least one domain")
        unknown = [d for d in self.domains if d not in DOMAINS]
        if unknown:
            raise ValueError(f"domains: unknown {unknown}; known domains are {list(DOMAINS)}")
        if len(set(self.domains)) != len(self.domains):
            raise ValueError(f"domains: listed twice in {self.domains}")
        return self


class FetchParams(Section):
    """The fetch stage: the sampled figures' PMC packages -> shards + index (``artifacts/figures``).

    Off in the demo (its images are local files; the stage then writes an empty index and reads nothing).
    On, it downloads exactly the packages of ``artifacts/sample.jsonl`` (``pmc_tar_url`` and
    ``image_file_path``, joined by ``sample.corpus.image_urls``), and every stage that opens figures reads
    them through its index. Figures already extracted are kept in ``cache_dir`` (DVC deletes a stage's
    outputs before it runs), so a killed or changed run downloads only what is missing."""

    enabled: bool = Field(False, description="fetch the sampled figures (paper profile); off: no-op")
    cache_dir: str = Field(".vital/fetch", description="extracted figures kept across runs (not an output)")
    shard_size: int = Field(2000, ge=1, description="figures per shard")
    workers: int = Field(8, ge=1, description="concurrent downloads")
    rate: float = Field(3.0, gt=0, description="requests per second per host (redirect targets included)")
    retries: int = Field(5, ge=0, description="retries on resets, timeouts, 5xx, 429")
    backoff: float = Field(1.0, ge=0, description="first retry delay (s), doubled each retry")
    timeout: float = Field(60.0, gt=0, description="socket timeout (s) of one read")
    max_side: int | None = Field(
        None, ge=8, description="downscale figures to this longer side; None: as served"
    )
    max_package_mb: float = Field(2048, gt=0, description="bytes per package (MiB), counted while streaming")
    max_member_mb: float = Field(
        64, gt=0, description="bytes per figure inside a package (MiB), from its header"
    )
    max_pixels: int = Field(
        50_000_000, ge=1, description="pixels per figure, from its header, before decoding"
    )
    package_s: float = Field(1800, gt=0, description="seconds per package: download, retries, extraction")
    max_failed_share: float = Field(
        1.0, ge=0, le=1, description="fail the stage when more of the sample than this is not fetched"
    )


class ClientParams(Section):
    """How model-facing calls are made (shared by generate and judge)."""

    base_url: str | None = Field(None, description="OpenAI-compatible server; None = api.openai.com")
    api_version: str | None = Field(None, description="Azure OpenAI API version")
    api_key_env: str = Field("OPENAI_API_KEY", description="environment variable holding the key")
    concurrency: int = Field(16, ge=1, le=1024)
    rpm: int = Field(500, ge=1, description="requests per minute budget (client side)")
    tpm: int = Field(200_000, ge=1, description="tokens per minute budget (client side)")
    max_retries: int = Field(6, ge=0, description="retries of 5xx, timeouts and connection errors (not 429s)")
    rate_limit_wait_s: float = Field(
        600,
        gt=0,
        description="longest one request keeps being retried through 429s before it counts as failed",
    )
    timeout_s: float = Field(120, gt=0)
    cache_dir: str | None = Field(None, description="request cache; default .vital/cache")
    max_failed_share: float | None = Field(
        None,
        ge=0,
        le=1,
        description="the stage fails (after writing what succeeded) when more of its outputs failed; "
        "null = the stage's default (generate 0.05, judge 0.02); a stage where nothing succeeded always fails",
    )


class Price(Section):
    input_per_1m: float = Field(ge=0)
    output_per_1m: float = Field(ge=0)


class GenerateParams(Section):
    backend: GenerateBackend = "template"
    model: str = "template-v1"
    mode: Literal["online", "batch"] = "online"
    candidates: int = Field(4, ge=1, le=32, description="conversations generated per figure")
    demos_per_prompt: int = Field(2, ge=0)
    max_image_side: int = Field(512, ge=32)
    temperature: float = Field(0.7, ge=0, le=2)
    max_tokens: int = Field(1024, ge=16)
    min_rounds: int = Field(1, ge=1, description="Q&A rounds per conversation: fewer is an invalid output")
    max_rounds: int = Field(
        3, ge=1, description="asked for in the prompt; the template generator's upper bound"
    )
    max_invalid_retries: int = Field(2, ge=0)
    seed: int = 0
    client: ClientParams = Field(default_factory=ClientParams)
    prices: dict[str, Price] = Field(default_factory=dict, description="USD per 1M tokens, by model")
    json_mode: bool = Field(False, description="send response_format json_object (if the server supports it)")
    batch_poll_s: float = Field(30, gt=0, description="batch mode: seconds between status polls")
    batch_max_lines: int = Field(50_000, ge=1, description="batch mode: requests per input file (API limit)")
    batch_max_mb: float = Field(190, gt=0, description="batch mode: MB per input file (API limit 200)")
    batch_rounds: int = Field(3, ge=1, description="batch mode: submissions of failed/expired lines")
    structure: Literal["vital", "paper"] = Field(
        "vital",
        description="vital: JSON reply, min_rounds-max_rounds rounds, same-modality demonstrations; paper: "
        "BioMed-VITAL's structure (4-5+ exchanges in the text's terms, demonstrations spread one per modality)",
    )
    prompt_file: str | None = Field(
        None, description="the lab's instruction text; null: vital/llm/defaults/generation_<structure>.txt"
    )
    allow_synthetic: bool = Field(
        False, description="let an API backend send the demo world's synthetic demonstrations (paid)"
    )

    @model_validator(mode="after")
    def _rounds_range(self):
        if self.max_rounds < self.min_rounds:
            raise ValueError(f"max_rounds ({self.max_rounds}) is below min_rounds ({self.min_rounds})")
        return self


class JudgeParams(Section):
    backend: JudgeBackend = "heuristic"
    model: str = "heuristic-v1"
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(256, ge=16)
    noise: float = Field(1.5, ge=0, description="heuristic judge only: score noise (std, 0-10 scale)")
    length_bias: float = Field(
        1.0,
        ge=0,
        description="heuristic judge only: points per doubling of answer length (verbosity bias; 0 = none)",
    )
    confidence_leniency: float = Field(
        0.5,
        ge=0,
        le=1,
        description="heuristic judge only: share of a wrong claim's penalty forgiven when nothing is hedged",
    )
    image_blindness: float = Field(
        0.5,
        ge=0,
        le=1,
        description="heuristic judge only: share of image-only findings (side, count, size) it does not check",
    )
    seed: int = 0
    client: ClientParams = Field(default_factory=ClientParams)
    mode: Literal["online", "batch"] = "online"
    max_image_side: int = Field(512, ge=32)
    max_invalid_retries: int = Field(1, ge=0, description="re-asks when a score cannot be parsed")
    structured: bool = Field(True, description="ask for a JSON-schema response (structured output)")
    prices: dict[str, Price] = Field(default_factory=dict, description="USD per 1M tokens, by model")
    batch_poll_s: float = Field(30, gt=0)
    structure: Literal["vital", "paper"] = Field(
        "vital",
        description="vital: the whole conversation on vital's 5 criteria, JSON reply; paper: BioMed-VITAL's "
        "structure, each question-answer pair with caption and mentions, score on the first line, mean per candidate",
    )
    rubric_file: str | None = Field(
        None, description="the lab's rubric text; null: vital/llm/defaults/judge_<structure>.txt"
    )
    allow_synthetic: bool = Field(
        False,
        description="let an API backend judge candidates of the template generator or synthetic demonstrations",
    )

    @model_validator(mode="after")
    def _paper_reply(self):
        if self.structure == "paper" and self.structured and self.backend != "heuristic":
            raise ValueError(
                "structured: the paper structure asks for the score on the first line, not JSON; "
                "set judge.structured: false"
            )
        return self


class LabelsParams(Section):
    backend: Literal["simulated", "files"] = "simulated"
    figures: int = Field(400, ge=1, description="simulated: figures shown to clinicians")
    per_task: int = Field(4, ge=2, description="simulated: candidates compared per task (2 = pairwise)")
    clinicians: int = Field(2, ge=1)
    overlap: float = Field(0.2, ge=0, le=1, description="fraction of tasks labelled by two clinicians")
    error_rate: float = Field(0.05, ge=0, le=0.5, description="simulated clinician's slip rate")
    seed: int = 0


class PairsParams(Section):
    model_pairing: Literal["within_figure", "paper"] = Field(
        "within_figure",
        description="within_figure (vital's): judge-score pairs of one figure's candidates, which differ only in "
        "the conversation; paper (BioMed-VITAL's filter/train_clip_filter.py): model_pairs pairs sampled across "
        "figures from two different judge-score levels",
    )
    model_pairs: int = Field(
        30000,
        ge=0,
        description="paper pairing: training model pairs (the reference's 30,000); validation and held-out "
        "figures get pairs in proportion to their candidates",
    )
    model_pairs_per_figure: int = Field(
        6, ge=0, description="within_figure pairing: pairs per figure at most"
    )
    min_score_gap: float = Field(
        0.5, gt=0, description="within_figure pairing: judge-score gap below which no model pair is made"
    )
    heldout_fraction: float = Field(0.4, ge=0, lt=1, description="human-labelled figures held out")
    val_fraction: float = Field(0.15, ge=0, lt=1, description="training figures kept for early stopping")
    seed: int = 0


class EmbedParams(Section):
    backbone: str = Field("foundation", description="'foundation', an open_clip name, or 'hf-hub:<id>'")
    pretrained: str | None = Field(None, description="local checkpoint for an open_clip name")
    backbone_revision: str | None = Field(
        None,
        description="hub revision (branch, tag or commit) of `backbone` (hf-hub:) when it is a hub id; None: main. The commit it resolves to is recorded in the metrics and MLflow",
    )
    batch_size: int = Field(64, ge=1)
    num_workers: int = Field(0, ge=0)
    device: str = "cpu"
    text_order: Literal["paper", "qa_first"] = Field(
        "paper", description="paper: caption+mention+Q&A, tail cut at the context length; qa_first: Q&A first"
    )
    text_mode: Literal["joint", "rounds"] = Field(
        "rounds",
        description="joint: one text per candidate (text_order); rounds: each Q&A round embedded on its own "
        "and pooled (mean, max), plus the caption+mention once per figure",
    )
    text_rounds: Literal["all", "first"] = Field(
        "all",
        description="joint mode: the Q&A rounds in the candidate's text; first = the first question and "
        "answer only, as BioMed-VITAL's selector reads a candidate",
    )
    side_features: bool = Field(
        True,
        description="rounds mode: the image's side score (left-minus-right patch tokens, probe fitted on "
        "captions that state a side) and each answer's side vector (round minus its left/right-mirrored text)",
    )


class SelectorParams(Section):
    human_weight: float | Literal["auto"] = Field(
        "auto",
        description=(
            "weight of a human pair relative to a model pair (paper: 400), or auto (demo):"
            " the one of auto_weights whose head agrees best with the validation clinician pairs (ties: their AUC)"
        ),
    )
    human_share: float | None = Field(
        None,
        ge=0,
        lt=1,
        description="the clinician pairs' share of the total training pair weight (the reference's 50 x 400 "
        "against 30,000 x 1 is 0.4); when set, the human weight is derived from the pair counts, so the "
        "balance carries over whatever they are (leave human_weight at auto)",
    )
    auto_weights: list[float] = Field(
        default_factory=lambda: [0.0, 1.0, 10.0, 100.0, 400.0, 1000.0],
        min_length=1,
        description="human_weight=auto: the weights tried (one head each, on the same features and pairs)",
    )
    loss: Literal["hinge", "logistic"] = "hinge"
    margin: float = Field(1.0, gt=0)
    head: Literal["vital", "paper"] = Field(
        "vital",
        description="vital: [img, txt, img*txt, |img-txt|] (+ rounds-mode terms) -> 2 GELU layers -> unbounded "
        "rating; paper (BioMed-VITAL's): [txt, img] side by side -> 3 ReLU layers -> sigmoid (needs "
        "embed.text_mode=joint)",
    )
    hidden: int = Field(128, ge=1)
    dropout: float = Field(0.1, ge=0, lt=1)
    epochs: int = Field(60, ge=1)
    batch_size: int = Field(256, ge=1)
    lr: float = Field(1e-3, gt=0)
    weight_decay: float = Field(1e-4, ge=0)
    patience: int = Field(8, ge=1)
    early_stopping: bool = Field(
        True,
        description="keep the epoch with the best validation agreement, stop after patience (the reference: no)",
    )
    seed: int = 0
    finetune_backbone: Literal["none", "text", "full"] = Field(
        "none",
        description="train the backbone with the head end to end (paper): none | text (text tower) | full",
    )
    backbone_lr: float = Field(1e-5, gt=0, description="learning rate of the backbone when it trains")
    device: str = Field("cpu", description="torch device of selector training (cuda for a real backbone)")
    compare_weights: list[float] = Field(
        default_factory=lambda: [0.0],
        description="extra heads trained at these human weights in the same run (agreement vs weight)",
    )
    judge_input: Literal["none", "residual"] = Field(
        "residual",
        description="none: the head rates from features alone; residual: rating = a * judge score + head, "
        "starting as the judge and kept as the judge unless training beats it on validation pairs",
    )
    seed_repeats: int = Field(
        3,
        ge=1,
        description="the chosen head (and the weight-0 head it is compared with) is also trained at seeds "
        "seed+1 .. seed+n-1: metrics report selector - judge and selector - weight 0 on held-out clinician pairs "
        "per seed and averaged over seeds, with a figure-bootstrap interval; the bakeoff rates both over them",
    )

    @field_validator("human_weight")
    @classmethod
    def _weight_or_auto(cls, value):
        if value != "auto" and value < 0:
            raise ValueError(f"must be >= 0 or auto (got {value:g})")
        return value

    @model_validator(mode="after")
    def _weight_or_share(self):
        if self.human_share is not None and self.human_weight != "auto":
            raise ValueError(
                f"human_share={self.human_share:g} derives the human weight: leave human_weight at auto "
                f"(got {self.human_weight:g})"
            )
        return self

    @model_validator(mode="after")
    def _weights_nonnegative(self):
        for name in ("compare_weights", "auto_weights"):
            bad = [w for w in getattr(self, name) if w < 0]
            if bad:
                raise ValueError(f"{name}: weights must be >= 0 (got {bad})")
        return self


class CurateParams(Section):
    keep: list[int] = Field(
        default_factory=lambda: [10, 40, 80, 90],
        description="top-k% subsets to write (percent, as in the paper)",
    )
    policy: Literal["best_per_figure", "all"] = "best_per_figure"
    mix: dict[str, list[str]] = Field(
        default_factory=dict,
        description="named mixtures: curated subsets (e.g. 'top80') and/or LLaVA JSON files, concatenated",
    )
    seed: int = Field(0, description="seed of the same-size random baseline subsets")

    @model_validator(mode="after")
    def _keep_in_range(self):
        for i, k in enumerate(self.keep):
            if not 0 < k <= 100:
                raise ValueError(f"keep[{i}]={k} must be a percentage in (0, 100]")
        return self


# the names of vital.bakeoff.methods.METHODS and vital.bakeoff.quality.QUALITY, so that a misspelt method or
# scorer fails at load (`vital params`), not when the bakeoff stage runs; tests/test_params.py checks both ways
BakeoffMethod = Literal["random", "length", "clip", "judge", "selector_w0", "selector", "ifd"]
BakeoffQuality = Literal["truth", "none"]


class BakeoffParams(Section):
    """Selection methods compared on the same candidate pool (``vital.bakeoff``; docs/bakeoff.md)."""

    methods: list[BakeoffMethod] = Field(
        default_factory=lambda: ["random", "length", "clip", "judge", "selector_w0", "selector", "ifd"],
        min_length=1,
        description="selection methods of vital.bakeoff.methods.METHODS; random is the baseline of the others",
    )
    keep: list[int] = Field(
        default_factory=lambda: [10, 40, 80], min_length=1, description="subset sizes, percent"
    )
    seeds: list[int] = Field(
        default_factory=lambda: [0, 1, 2],
        min_length=1,
        description="random subsets (and downstream tunes) per seed",
    )
    quality: BakeoffQuality = Field(
        "truth", description="quality scorer of every subset: truth (demo world's hidden truth) | none"
    )
    bootstrap: int = Field(1000, ge=0, description="bootstrap resamples of each gain over random")
    ifd_model: str = Field(
        "models/base", description="ifd: the LLaVA whose language model scores the answers"
    )
    ifd_max_length: int = Field(128, ge=16, description="ifd: tokens per question+answer round")
    ifd_batch_size: int = Field(64, ge=1)
    downstream_keep: int = Field(
        40, gt=0, le=100, description="bakeoff/dvc.yaml tunes on this size (one of keep)"
    )
    control: Literal["world", "none"] = Field(
        "world",
        description="positive control (bakeoff/dvc.yaml): world writes truth and flawed conversations from the demo "
        "world's hidden truth | none (no hidden truth: control_data stops naming this parameter)",
    )
    control_figures: int = Field(
        480,
        ge=1,
        description="positive control (bakeoff/dvc.yaml): sampled figures with truth-written and flawed "
        "conversations, each tuned over seeds (480: the size of the demo's top 40%)",
    )
    downstream_methods: list[BakeoffMethod] = Field(
        default_factory=lambda: ["random", "length", "clip", "judge", "selector", "ifd"],
        description="methods tuned downstream (bakeoff/dvc.yaml), each over seeds",
    )

    @model_validator(mode="after")
    def _consistent(self):
        for name in ("methods", "downstream_methods", "keep", "seeds"):
            values = getattr(self, name)
            if len(set(values)) != len(values):
                raise ValueError(f"{name}: listed twice in {values}")
        for i, k in enumerate(self.keep):
            if not 0 < k <= 100:
                raise ValueError(f"keep[{i}]={k} must be a percentage in (0, 100]")
        if self.downstream_keep not in self.keep:
            raise ValueError(f"downstream_keep={self.downstream_keep} is not one of keep={self.keep}")
        missing = [m for m in self.downstream_methods if m not in self.methods]
        if missing:
            raise ValueError(f"downstream_methods: {missing} are not in methods {self.methods}")
        if "random" not in self.methods:
            raise ValueError("methods: must include random (every gain is measured against it)")
        return self


class LoraParams(Section):
    r: int = Field(64, ge=1)
    alpha: int = Field(64, ge=1)
    dropout: float = Field(0.0, ge=0, lt=1)
    target_modules: list[str] = Field(
        default_factory=lambda: ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    )
    modules_to_save: list[str] = Field(
        default_factory=lambda: ["embed_tokens", "lm_head"],
        description="language-model modules trained in full beside the adapter (peft modules_to_save); the "
        "demo LLM never read the instruction data's words during alignment, so their frozen embeddings would "
        "stay random. A pretrained LLM needs none ([]). The projector always trains.",
    )


class TrainParams(Section):
    """How a LLaVA checkpoint is trained; shared by instruction tuning (`tune`) and VQA fine-tuning (`finetune`)."""

    method: Literal["lora", "qlora", "full"] = Field(
        "lora",
        description="lora (peft), qlora (lora on a 4-bit NF4 base; pip install 'vital[qlora]') or full",
    )
    lora: LoraParams = Field(default_factory=LoraParams)
    freeze_vision: bool = True
    epochs: float = Field(16, gt=0, description="passes over the training set (demo sets are small)")
    max_steps: int = Field(-1, ge=-1)
    batch_size: int = Field(16, ge=1)
    grad_accum: int = Field(1, ge=1)
    lr: float = Field(1e-2, gt=0)
    mixed_precision: Literal["no", "fp16", "bf16"] = "no"
    checkpoint_every: int = Field(100, ge=1)
    max_length: int = Field(256, ge=16)
    seed: int = 0
    load_dtype: Literal["float32", "bfloat16", "float16"] = Field(
        "float32",
        description="dtype the base weights are loaded in (bfloat16 for 13B on GPUs); trainable weights are "
        "kept in float32 (master weights) and mixed_precision must match; full needs float32 outside DeepSpeed",
    )
    projector_lr: float | None = Field(
        None, gt=0, description="learning rate of the projector (LLaVA-1.5 LoRA: 2e-5); null = lr"
    )
    gradient_checkpointing: bool = Field(
        False,
        description="recompute activations in the backward pass (LLaVA always does): less memory, more time",
    )
    image_aspect_ratio: Literal["pad", "crop"] = Field(
        "pad",
        description="pad: to a square with the image processor's image_mean colour first (LLaVA-1.5); "
        "crop: the processor's resize and centre crop only",
    )

    @field_validator("mixed_precision", mode="before")
    @classmethod
    def _yaml_no(cls, v):
        # `dvc exp run -S` rewrites params.yaml and drops the quotes around "no", which YAML reads as false
        return "no" if v is False else v


class TuneParams(TrainParams):
    base: str = Field("models/base", description="hub id or local dir of a LlavaForConditionalGeneration")
    base_revision: str | None = Field(
        None,
        description="hub revision (branch, tag or commit) of `base` when it is a hub id; None: main. The commit it resolves to is recorded in the metrics and MLflow",
    )
    keep: int = Field(
        40, gt=0, le=100, description="which curated subset to tune on (percent, one of curate.keep)"
    )
    subsets: list[Literal["top", "random"]] = Field(
        default_factory=lambda: ["top", "random"],
        description="tune on the selector's top-k% and on the same-size random baseline (the method's claim)",
    )
    seeds: list[int] = Field(default_factory=lambda: [0, 1, 2], min_length=1, description="one tune per seed")
    launcher: str | None = Field(
        None,
        description="what runs stages/tune.py in dvc.yaml's cmd (written there by `vital dag --write`), e.g. "
        "'accelerate launch --config_file configs/accelerate/zero3.yaml'; null = python (one process)",
    )
    epochs: float = Field(
        6,
        gt=0,
        description="passes over the curated subset (the demo's: the budget at which the positive control "
        "separates, docs/tuning.md)",
    )

    def model_names(self) -> list[str]:
        """The tune stage's matrix, one model per subset and seed: ``<subset>-s<seed>``."""
        return [f"{subset}-s{seed}" for subset in self.subsets for seed in self.seeds]


def _no_duplicate_names(sets: list[EvalSet]) -> None:
    names = [s.name for s in sets]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise ValueError(f"sets: duplicate set names {dupes}")


class EvalSet(Section):
    """One evaluation set as its users download it (docs/evaluation.md lists the formats and layouts)."""

    name: str
    format: Literal["demo", "vqa_rad", "slake", "pathvqa", "llava_med_vqa", "llava_med_qa"]
    path: str = Field(description="question file, relative to the repository root or absolute")
    images: str | None = Field(None, description="image folder; default: the release's own layout")
    split: Literal["test", "train", "all"] = Field("test", description="vqa_rad: which phrase_type split")
    limit: int | None = Field(None, ge=1, description="evaluate only the first N questions (smoke runs)")


class EvaluateParams(Section):
    sets: list[EvalSet] = Field(
        default_factory=lambda: [EvalSet(name="demo", format="demo", path="data/vqa/demo/questions.jsonl")]
    )
    models: dict[str, str] = Field(
        default_factory=lambda: {"base": "models/base"},
        description="extra models (name -> local dir or hub id); every tune.subsets x tune.seeds model is added",
    )
    max_new_tokens: int = Field(16, ge=1)
    hallucination: Literal["world", "none"] = Field(
        "world",
        description="world: also ask each model to describe the demo world's held-out VQA figures and check "
        "every claim against their hidden truth (vital/vqa/hallucination.py) | none (no hidden truth)",
    )
    describe_max_new_tokens: int = Field(48, ge=1, description="hallucination: tokens per description")
    batch_size: int = Field(32, ge=1)
    device: str = Field("auto", description="'auto' (cuda if available), 'cpu', 'cuda', 'cuda:1', ...")
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = Field("auto", description="auto: bf16 on GPU")
    max_invalid_fraction: float = Field(
        0.05, ge=0, le=1, description="invalid records tolerated per set (skipped and listed) before failing"
    )

    @model_validator(mode="after")
    def _unique_names(self):
        _no_duplicate_names(self.sets)
        return self


class FinetuneParams(TrainParams):
    """LLaVA-Med's VQA protocol: each model fine-tuned on a set's train split, then scored on its test split.

    LLaVA-Med reports VQA-RAD, SLAKE and PathVQA this way; the `evaluate_finetuned` stage scores every
    fine-tuned model on the evaluate set of the same name, beside the zero-shot figures of `evaluate`.
    """

    sets: list[EvalSet] = Field(
        default_factory=lambda: [
            EvalSet(name="demo", format="demo", path="data/vqa/demo/train.jsonl", split="train")
        ],
        description="train splits, in the evaluate loaders' formats; each name must be one of evaluate.sets",
    )
    method: Literal["lora", "qlora", "full"] = Field(
        "full",
        description="full (the language model and projector; the vision tower per freeze_vision), lora or qlora",
    )
    epochs: float = Field(3, gt=0, description="passes over the train split")
    lr: float = Field(1e-3, gt=0)
    max_length: int = Field(128, ge=16, description="tokens per question and answer, image tokens included")

    @model_validator(mode="after")
    def _unique_names(self):
        _no_duplicate_names(self.sets)
        return self


class ChatEvalParams(Section):
    """Judge-scored open visual chat on the evaluate stage's predictions (docs/evaluation.md)."""

    backend: ChatEvalBackend = Field(
        "heuristic", description="heuristic = offline stand-in scoring against the reference answer"
    )
    model: str = "heuristic-answer-v1"
    sets: list[str] | None = Field(
        None, description="names of evaluate.sets to score (their OPEN questions); None = every set"
    )
    compare: list[str] = Field(
        default_factory=lambda: ["top-s0", "random-s0"],
        description="two evaluated models (evaluate.models or <subset>-s<seed>): win rate of the first",
    )
    relative: Literal["ratio_of_sums", "mean_of_ratios"] = Field(
        "ratio_of_sums",
        description="relative_score: ratio_of_sums (vital's: 100 x sum of model scores / sum of reference "
        "scores) | mean_of_ratios (LLaVA-Med's summarize_gpt_review: mean over questions of 100 x model / "
        "reference); metrics hold both",
    )
    win_rate: Literal["scores", "paper"] = Field(
        "scores",
        description="scores (vital's): two 1-10 scores from caption and context, text only | paper "
        "(BioMed-VITAL's eval/win_rate.py): the judge sees the image, the question, the ground truth and "
        "both answers and gives [[A]], [[B]] or [[C]] (tie); needs a vision API backend",
    )
    max_image_side: int = Field(
        512, ge=16, description="win_rate=paper: the image's longer side sent to the judge"
    )
    temperature: float = Field(0.0, ge=0, le=2)
    max_tokens: int = Field(256, ge=16)
    client: ClientParams = Field(default_factory=ClientParams)
    prices: dict[str, Price] = Field(default_factory=dict, description="USD per 1M tokens, by model")

    @model_validator(mode="after")
    def _paper_win_rate_sees_the_image(self):
        if self.win_rate == "paper" and self.backend == "heuristic":
            raise ValueError("win_rate=paper shows the judge the image: use backend openai or azure")
        return self

    @field_validator("compare")
    @classmethod
    def _two_models(cls, v: list[str]) -> list[str]:
        if len(v) != 2 or v[0] == v[1]:
            raise ValueError("name two different models of evaluate.models")
        return v

    @field_validator("sets")
    @classmethod
    def _distinct_sets(cls, v: list[str] | None) -> list[str] | None:
        if v is not None and len(set(v)) != len(v):
            raise ValueError("a set is listed twice")
        return v


class ExportParams(Section):
    """The release: curated subsets exported as LLaVA JSON + loose images and as a Hugging Face dataset."""

    subsets: list[str] = Field(
        default_factory=lambda: ["top40"],
        description="curated sets to release: <top|random><curate.keep> or a curate.mix name",
    )
    formats: list[Literal["llava", "hf"]] = Field(
        default_factory=lambda: ["llava", "hf"],
        description="llava: <name>.json + images/ (LLaVA-Med's loader); hf: Parquet shards + dataset card",
    )
    shard_rows: int = Field(5000, ge=1, description="rows per Parquet shard of the hf format")


class MlflowParams(Section):
    experiment: str = "vital"
    registered_model: str = "vital-llava"
    enabled: bool = Field(
        True, description="log tune runs and register models (tracking URI: MLFLOW_TRACKING_URI)"
    )


class Params(Section):
    world: WorldParams = Field(default_factory=WorldParams)
    foundation: FoundationParams = Field(default_factory=FoundationParams)
    align: AlignParams = Field(default_factory=AlignParams)
    sample: SampleParams = Field(default_factory=SampleParams)
    fetch: FetchParams = Field(default_factory=FetchParams)
    generate: GenerateParams = Field(default_factory=GenerateParams)
    judge: JudgeParams = Field(default_factory=JudgeParams)
    labels: LabelsParams = Field(default_factory=LabelsParams)
    pairs: PairsParams = Field(default_factory=PairsParams)
    embed: EmbedParams = Field(default_factory=EmbedParams)
    selector: SelectorParams = Field(default_factory=SelectorParams)
    curate: CurateParams = Field(default_factory=CurateParams)
    bakeoff: BakeoffParams = Field(default_factory=BakeoffParams)
    tune: TuneParams = Field(default_factory=TuneParams)
    evaluate: EvaluateParams = Field(default_factory=EvaluateParams)
    finetune: FinetuneParams = Field(default_factory=FinetuneParams)
    chat_eval: ChatEvalParams = Field(default_factory=ChatEvalParams)
    export: ExportParams = Field(default_factory=ExportParams)
    mlflow: MlflowParams = Field(default_factory=MlflowParams)

    @model_validator(mode="after")
    def _cross_checks(self):
        if self.tune.keep not in self.curate.keep:
            raise ValueError(f"tune.keep={self.tune.keep} is not one of curate.keep={self.curate.keep}")
        evaluated = {s.name: s for s in self.evaluate.sets}
        for i, s in enumerate(self.finetune.sets):
            test = evaluated.get(s.name)
            if test is None:
                raise ValueError(
                    f"finetune.sets[{i}].name={s.name!r} is not one of evaluate.sets {sorted(evaluated)}: "
                    "a fine-tuned model is scored on the evaluate set of the same name"
                )
            # only vqa_rad keeps both splits in one file (told apart by `split`); any other format's file is one split
            if s.path == test.path and (s.format != "vqa_rad" or s.split in (test.split, "all")):
                raise ValueError(
                    f"finetune.sets[{i}] ({s.path}, split {s.split}) is the test split evaluate.sets scores as "
                    f"{s.name!r}: fine-tuning on it would train on the test questions"
                )
        self._check_chat_eval(sorted(evaluated))
        self._check_fetch()
        curated = [f"{kind}{k}" for k in self.curate.keep for kind in ("top", "random")] + list(
            self.curate.mix
        )
        unknown = [n for n in self.export.subsets if n not in curated]
        if unknown:
            raise ValueError(f"export.subsets: {unknown} are not curated sets {curated}")
        return self

    def _check_fetch(self) -> None:
        c = self.sample.corpus
        if not self.fetch.enabled:
            return
        if not c.image_urls:
            raise ValueError(
                "fetch.enabled needs sample.corpus.image_urls (LLaVA-Med's llava_med_image_urls.jsonl): "
                "the packages to fetch are joined onto the sample from it"
            )
        if c.shards:
            raise ValueError(
                "fetch.enabled and sample.corpus.shards both say where the images come from: set one "
                "(shards: a corpus fetched beforehand with `vital fetch-images`)"
            )
        if c.check_images:
            raise ValueError(
                "fetch.enabled needs sample.corpus.check_images: false (the images are fetched after sample)"
            )

    def _check_chat_eval(self, set_names: list[str]) -> None:
        unknown = [n for n in self.chat_eval.sets or [] if n not in set_names]
        if unknown:
            raise ValueError(f"chat_eval.sets: {unknown} are not names of evaluate.sets {set_names}")
        models = [*self.tune.model_names(), *self.evaluate.models]
        bad = [m for m in self.chat_eval.compare if m not in models]
        if bad:
            raise ValueError(
                f"chat_eval.compare: {bad} are not names of evaluate.models or tuned models {models}"
            )
        if CHAT_REFERENCE in models:
            raise ValueError(
                f"evaluate.models: {CHAT_REFERENCE!r} is reserved by chat_eval for the reference answers"
            )


def _describe(err: ValidationError, path: Path) -> str:
    lines = [f"{path}: invalid parameters"]
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        if e["type"] == "extra_forbidden":
            lines.append(f"  {key}: unknown key (misspelled?)")
        elif e["type"] == "literal_error":
            lines.append(
                "  " + unknown_name(key, e.get("input"), re.findall(r"'([^']*)'", e["ctx"]["expected"]))
            )
        else:
            got = e.get("input")
            shown = "" if isinstance(got, dict | list) else f" (got {got!r})"
            lines.append(f"  {key}: {e['msg']}{shown}")
    return "\n".join(lines)


def parse_params(data: dict, path: Path | str = "params.yaml") -> Params:
    try:
        return Params.model_validate(data or {})
    except ValidationError as e:
        raise ParamsError(_describe(e, Path(path))) from None


def load_params(path: str | Path = "params.yaml") -> Params:
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ParamsError(f"{path}: not found (run from the repository root)") from None
    except yaml.YAMLError as e:
        raise ParamsError(f"{path}: not valid YAML ({e})") from None
    return parse_params(data, path)
