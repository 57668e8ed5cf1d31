"""The stage table: every pipeline stage's script, entry function, inputs, backends and options.

One table serves ``stages/<script>.py``, ``vital run <stage>``, ``vital dag`` (which writes each stage's
``deps`` in dvc.yaml from it) and the tests. Every entry function has one signature::

    entry(params: Params, paths: Paths, **options) -> dict | None

Entries are named as ``module:function`` strings and imported only when their stage runs, so that this
module imports nothing of the library and a stage's code is exactly its entry's import closure (plus the
backends its params choose): see ``vital.dag``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Option:
    """A command-line option of a stage script (matrix stages: which subset, seed or model)."""

    name: str
    type: type = str
    help: str = ""
    required: bool = False


@dataclass(frozen=True)
class Stage:
    name: str  # the stage's name in dvc.yaml
    entry: str  # "module:function"
    script: str  # stages/<script>.py
    reads: tuple[str, ...] = ()  # repository paths it reads in every profile (may hold ${item.*})
    # (dotted param, "module:REGISTRY"): the backend the param chooses, its code and the data it reads
    backends: tuple[tuple[str, str], ...] = ()
    # "module:function" (params, root) -> paths: inputs named by params (eval sets, mixture files, models)
    param_reads: tuple[str, ...] = ()
    options: tuple[Option, ...] = ()
    doc: str = ""
    pipeline: str = "dvc.yaml"  # the dvc.yaml that declares it (bakeoff/dvc.yaml: the bakeoff's downstream)


# the figures' images: data/corpus/images, the fetch stage's artifacts/figures when fetch.enabled, or the
# shards fetched beforehand when sample.corpus.shards is set
_IMAGES = "vital.sample:corpus_images"
_SEED = Option("seed", int, "overrides the section's seed")

STAGES: dict[str, Stage] = {
    s.name: s
    for s in (
        Stage(
            "foundation",
            "vital.foundation:run_stage",
            "foundation",
            backends=(("foundation.backend", "vital.foundation:BACKENDS"),),
            doc="demo: pretrain the tiny CLIP and tokenizer; pretrained: record the checkpoints; "
            "restore: copy data/pretrained/foundation",
        ),
        Stage(
            "align",
            "vital.llava.align:run_stage",
            "align",
            backends=(("align.backend", "vital.llava.align:BACKENDS"),),
            param_reads=("vital.sample:align_reads",),
            doc="assemble the base LLaVA and align it on captions (pretrained: on the sampled figures, or "
            "record the checkpoint with steps 0; restore: copy data/pretrained/base)",
        ),
        Stage(
            "sample",
            "vital.sample:run_stage",
            "sample",
            param_reads=("vital.sample:corpus_files",),
            doc="domain-stratified, seeded sample of figure records",
        ),
        Stage(
            "fetch",
            "vital.fetch:run_stage",
            "fetch",
            param_reads=("vital.fetch:stage_reads",),
            doc="the sampled figures' PMC packages -> artifacts/figures (shards + index); off in the demo",
        ),
        Stage(
            "generate",
            "vital.generate:run",
            "generate",
            reads=("artifacts/sample.jsonl", "data/demonstrations"),
            backends=(("generate.backend", "vital.generate:GENERATORS"),),
            param_reads=(_IMAGES,),
            doc="candidate conversations per sampled figure",
        ),
        Stage(
            "judge",
            "vital.judge:run",
            "judge",
            reads=("artifacts/candidates.jsonl", "artifacts/sample.jsonl"),
            backends=(("judge.backend", "vital.judge:JUDGES"),),
            param_reads=(_IMAGES,),
            doc="0-10 rubric score per candidate (model preference)",
        ),
        Stage(
            "labels",
            "vital.labels:run_stage",
            "labels",
            reads=("artifacts/candidates.jsonl", "artifacts/sample.jsonl"),
            backends=(("labels.backend", "vital.labels:BACKENDS"),),
            doc="clinician preferences (simulated, or files from data/labels)",
        ),
        Stage(
            "pairs",
            "vital.pairs:run_stage",
            "pairs",
            reads=("artifacts/judgments.jsonl", "artifacts/labels.jsonl"),
            doc="model and human preference pairs, held-out split by figure",
        ),
        Stage(
            "embed",
            "vital.embed.stage:run_stage",
            "embed",
            reads=(
                "models/foundation",
                "artifacts/candidates.jsonl",
                "artifacts/sample.jsonl",
            ),
            param_reads=(_IMAGES,),
            doc="image and text features of every candidate",
        ),
        Stage(
            "select",
            "vital.selector.stage:run_stage",
            "selector",  # stages/select.py would shadow the stdlib `select` module
            reads=(
                "artifacts/embeddings",
                "artifacts/pairs.jsonl",
                "artifacts/judgments.jsonl",
                "artifacts/labels.jsonl",
                # read with selector.finetune_backbone only; they change only when the embeddings do
                "artifacts/candidates.jsonl",
                "artifacts/sample.jsonl",
                "models/foundation",
            ),
            param_reads=(_IMAGES,),  # read with selector.finetune_backbone only
            doc="train the selection model, score every candidate",
        ),
        Stage(
            "curate",
            "vital.curate:run_stage",
            "curate",
            reads=("artifacts/scores.jsonl", "artifacts/candidates.jsonl", "artifacts/sample.jsonl"),
            param_reads=("vital.curate:mix_files",),
            doc="top-k% subsets, same-size random baselines, mixtures",
        ),
        Stage(
            "export",
            "vital.export:run_stage",
            "export",
            param_reads=("vital.export:curated_files", _IMAGES),
            doc="the release: curated subsets as LLaVA JSON + images and as a Hugging Face dataset with a card",
        ),
        Stage(
            "bakeoff",
            "vital.bakeoff.stage:run_stage",
            "bakeoff",
            reads=(
                "artifacts/candidates.jsonl",
                "artifacts/scores.jsonl",
                "artifacts/scores_by_weight.jsonl",
                "artifacts/judgments.jsonl",
                "artifacts/embeddings",
                # each method's upstream cost (seconds, API spend, clinician labels)
                "metrics/embed.json",
                "metrics/judge.json",
                "metrics/labels.json",
                "metrics/pairs.json",
                "metrics/select.json",
            ),
            backends=(("bakeoff.quality", "vital.bakeoff.quality:QUALITY"),),
            param_reads=("vital.bakeoff.stage:ifd_model",),
            doc="selection methods compared on the same pool: subsets, quality, gain over random, cost",
        ),
        Stage(
            "bakeoff_tune",
            "vital.bakeoff.downstream:tune_stage",
            "bakeoff_tune",
            reads=("artifacts/bakeoff",),
            param_reads=("vital.tune:base_model", _IMAGES),
            options=(
                Option("method", str, "a method of bakeoff.downstream_methods", required=True),
                Option("seed", int, "tune seed (random: also its subset's seed)", required=True),
            ),
            doc="tune the base on one bakeoff method's subset, one seed",
            pipeline="bakeoff/dvc.yaml",
        ),
        Stage(
            "bakeoff_evaluate",
            "vital.bakeoff.downstream:evaluate_stage",
            "bakeoff_evaluate",
            param_reads=("vital.evaluate:eval_files", "vital.bakeoff.downstream:downstream_models"),
            doc="VQA of every bakeoff-tuned model, over seeds and minus random",
            pipeline="bakeoff/dvc.yaml",
        ),
        Stage(
            "tune",
            "vital.tune:run_stage",
            "tune",
            reads=("artifacts/curated/${item.subset}${tune.keep}.json",),
            param_reads=("vital.tune:base_model", _IMAGES),
            options=(Option("subset", str, "curated subset: top or random", required=True), _SEED),
            doc="instruction-tune the base LLaVA on a curated subset",
        ),
        Stage(
            "finetune",
            "vital.finetune:run_stage",
            "finetune",
            reads=("models/tuned/${item.subset}-s${item.seed}",),
            param_reads=("vital.finetune:train_files",),
            options=(
                Option("model", str, "checkpoint to fine-tune (local dir or hub id)", required=True),
                Option("name", str, "output name: models/finetuned/<name>/<set>", required=True),
                _SEED,
            ),
            doc="LLaVA-Med's VQA protocol: fine-tune a tuned model on each train split",
        ),
        Stage(
            "finetune_base",
            "vital.finetune:run_stage",
            "finetune",
            param_reads=("vital.finetune:train_files", "vital.tune:base_model"),
            options=(
                Option("model", str, "checkpoint to fine-tune (local dir or hub id)", required=True),
                Option("name", str, "output name: models/finetuned/<name>/<set>", required=True),
                _SEED,
            ),
            doc="the control: the untuned base fine-tuned the same way",
        ),
        Stage(
            "evaluate",
            "vital.evaluate:run",
            "evaluate",
            reads=("models/tuned",),
            param_reads=("vital.evaluate:eval_files", "vital.evaluate:extra_models"),
            doc="zero-shot VQA of every tuned model and the base",
        ),
        Stage(
            "evaluate_finetuned",
            "vital.evaluate:run_finetuned",
            "evaluate_finetuned",
            reads=("models/finetuned",),
            param_reads=("vital.evaluate:eval_files",),
            doc="each fine-tuned model on the test split of its set",
        ),
        Stage(
            "chat_eval",
            "vital.chat_eval:run",
            "chat_eval",
            reads=("artifacts/predictions",),
            backends=(("chat_eval.backend", "vital.chat_eval:BACKENDS"),),
            param_reads=("vital.evaluate:eval_files",),
            doc="judge-scored open answers and win rate",
        ),
    )
}


PIPELINES = tuple(dict.fromkeys(s.pipeline for s in STAGES.values()))
"""Every dvc.yaml the stage table spans, relative to the repository root."""


def in_pipeline(pipeline: str) -> dict[str, Stage]:
    return {n: s for n, s in STAGES.items() if s.pipeline == pipeline}


def by_script(script: str) -> list[Stage]:
    """The dvc.yaml stages a script runs (finetune and finetune_base share one)."""
    return [s for s in STAGES.values() if s.script == script]


def get(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}") from None
