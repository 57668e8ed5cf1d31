"""The stage table: the one declaration of every pipeline stage.

One table serves ``stages/<script>.py``, ``vital run <stage>``, ``vital dag`` and the tests. ``vital dag
--write`` generates from it each stage's whole body in its dvc.yaml (``cmd``, ``deps``, ``params``,
``outs``, ``metrics``, ``plots``, ``matrix``/``foreach``, ``wdir``), a missing ``stages/<script>.py``, a
missing params.yaml section (from the code defaults) and the stage table of docs/architecture.md;
``vital dag --check`` fails on any drift between them. Every entry function has one signature::

    entry(params: Params, paths: Paths, **options) -> dict | None

Adding a stage: the entry function, a ``Stage`` row below, its params section in vital/params.py (a
pydantic model and its field in ``Params``), then ``vital dag --write``. The ``Stage`` fields, as they map
to dvc.yaml:

- ``name``: the stage's key; ``script``: ``stages/<script>.py`` (default: the name), run by ``cmd``
  as ``python stages/<script>.py <args>``; ``args`` may use ``${item...}`` (matrix) or ``${item}`` (foreach)
- ``entry``: ``module:function``; ``doc``: one line, the docs table and the script's ``--help``;
  ``comment``: lines written above the stage in dvc.yaml
- ``params``: the dvc.yaml ``params`` list (default: the section named like the stage)
- ``reads``: repository paths it reads in every profile; ``backends``: (dotted param, registry) whose
  chosen backend adds code and reads; ``param_reads``: functions (params, root) -> paths named by
  params. Together with the import closure of the entry they are its ``deps`` (never written by hand)
- ``outs``: paths, or ``Out(path, cache=False)``; ``plots``: ``Plot(path, x, y, template)``
- ``headline``: ``module:function`` (the record's detail -> the few numbers compared across experiments);
  with it the stage's ``metrics`` is ``metrics/<name>.json`` (``dvc exp show``'s columns); every stage also
  writes its evidence, ``metrics/detail/<name>.json`` (foreach: ``metrics/detail/<script>/<item>.json``), a
  ``cache: false`` out (vital/stats.py has the layout); ``item``: the foreach item's name, a format string
  over the options (``"{subset}-s{seed}"``). Metrics, evidence and plots are ``cache: false``
- ``matrix``: (key, ``${...}``) pairs, or ``foreach``: one ``${...}``; ``options``: its command-line
  options; ``pipeline``: the dvc.yaml that declares it (``bakeoff/dvc.yaml`` runs with ``wdir: ..``)

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
class Out:
    """An output in dvc.yaml's ``outs`` that is not a plain cached path."""

    path: str
    cache: bool = True


@dataclass(frozen=True)
class Plot:
    """A plot CSV the stage writes (``cache: false``), with the axes ``dvc plots`` draws."""

    path: str
    x: str
    y: str
    template: str = ""


@dataclass(frozen=True)
class Stage:
    name: str  # the stage's name in dvc.yaml
    entry: str  # "module:function"
    script: str = ""  # stages/<script>.py; default: the name
    reads: tuple[str, ...] = ()  # repository paths it reads in every profile (may hold ${item.*})
    # (dotted param, "module:REGISTRY"): the backend the param chooses, its code and the data it reads
    backends: tuple[tuple[str, str], ...] = ()
    # "module:function" (params, root) -> paths: inputs named by params (eval sets, mixture files, models)
    param_reads: tuple[str, ...] = ()
    options: tuple[Option, ...] = ()
    doc: str = ""
    pipeline: str = "dvc.yaml"  # the dvc.yaml that declares it (bakeoff/dvc.yaml: the bakeoff's downstream)
    args: str = ""  # the command line's arguments after the script
    params: tuple[str, ...] = ()  # dvc.yaml params; default: (name,)
    outs: tuple[str | Out, ...] = ()
    headline: str = ""  # "module:function": the record's detail -> headline numbers (metrics/<name>.json)
    item: str = ""  # matrix/foreach: the item's name, a format string over the options ("{subset}-s{seed}")
    plots: tuple[Plot, ...] = ()
    matrix: tuple[tuple[str, str | tuple[str, ...]], ...] = ()  # (key, "${param}" or the values)
    foreach: str = ""
    comment: str = ""
    launcher: str = ""  # dotted param naming the command that runs the script in dvc.yaml's cmd ("" = python)

    @property
    def script_path(self) -> str:
        return f"stages/{self.script or self.name}.py"

    @property
    def param_keys(self) -> tuple[str, ...]:
        return self.params or (self.name,)

    @property
    def metric_files(self) -> tuple[str, ...]:
        return (f"metrics/{self.name}.json",) if self.headline else ()

    @property
    def evidence_file(self) -> str:
        """Its evidence in dvc.yaml (``${item...}`` in a foreach stage): one file per item, named by script,
        so that finetune and finetune_base, one script, write one folder."""
        if not self.item:
            return f"metrics/detail/{self.name}.json"
        args = dict(zip(self.args.split()[::2], self.args.split()[1::2], strict=True))
        return (
            f"metrics/detail/{self.script or self.name}/"
            + self.item.format_map({o.name: args.get(f"--{o.name}", "") for o in self.options})
            + ".json"
        )

    def item_name(self, options: dict, record: dict | None = None) -> str:
        """The item a run of a foreach stage is (an option left out: the value its record reports)."""
        if not self.item:
            return ""
        values = {o.name: options.get(o.name) for o in self.options}
        values = {k: (record or {}).get(k) if v is None else v for k, v in values.items()}
        return self.item.format_map(values)

    @property
    def cmd(self) -> str:
        return f"python {self.script_path} {self.args}".strip()


# the figures' images: data/corpus/images, the fetch stage's artifacts/figures when fetch.enabled, or the
# shards fetched beforehand when sample.corpus.shards is set
_IMAGES = "vital.corpus_paths:corpus_images"
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
            outs=("models/foundation",),
            plots=(Plot("metrics/plots/foundation_loss.csv", "step", "loss"),),
        ),
        Stage(
            "align",
            "vital.llava.align:run_stage",
            "align",
            backends=(("align.backend", "vital.llava.align:BACKENDS"),),
            param_reads=("vital.corpus_paths:align_reads",),
            doc="assemble the base LLaVA and align it on captions (pretrained: on the sampled figures, or "
            "record the checkpoint with steps 0; restore: copy data/pretrained/base)",
            outs=("models/base",),
            plots=(Plot("metrics/plots/align_loss.csv", "step", "loss"),),
        ),
        Stage(
            "sample",
            "vital.sample:run_stage",
            "sample",
            param_reads=("vital.corpus_paths:corpus_files",),
            headline="vital.sample:headline",
            doc="domain-stratified, seeded sample of figure records",
            outs=("artifacts/sample.jsonl",),
        ),
        Stage(
            "fetch",
            "vital.fetch.stage:run_stage",
            "fetch",
            param_reads=("vital.fetch.stage:stage_reads",),
            doc="the sampled figures' PMC packages -> artifacts/figures (shards + index); off in the demo",
            outs=("artifacts/figures",),
        ),
        Stage(
            "generate",
            "vital.generate:run",
            "generate",
            reads=("artifacts/sample.jsonl", "data/demonstrations"),
            backends=(("generate.backend", "vital.generate:GENERATORS"),),
            param_reads=(_IMAGES, "vital.generate:prompt_files"),
            headline="vital.generate:headline",
            doc="candidate conversations per sampled figure",
            outs=("artifacts/candidates.jsonl", "artifacts/generate_failures.jsonl"),
        ),
        Stage(
            "judge",
            "vital.judge:run",
            "judge",
            reads=("artifacts/candidates.jsonl", "artifacts/sample.jsonl"),
            backends=(("judge.backend", "vital.judge:JUDGES"),),
            param_reads=(_IMAGES, "vital.judge:rubric_files"),
            headline="vital.judge:headline",
            doc="0-10 rubric score per candidate (model preference)",
            outs=("artifacts/judgments.jsonl",),
        ),
        Stage(
            "labels",
            "vital.labels:run_stage",
            "labels",
            reads=("artifacts/candidates.jsonl", "artifacts/sample.jsonl"),
            backends=(("labels.backend", "vital.labels:BACKENDS"),),
            headline="vital.labels:headline",
            doc="clinician preferences (simulated, or files from data/labels)",
            outs=("artifacts/labels.jsonl",),
        ),
        Stage(
            "pairs",
            "vital.pairs:run_stage",
            "pairs",
            reads=("artifacts/judgments.jsonl", "artifacts/labels.jsonl"),
            headline="vital.pairs:headline",
            doc="model and human preference pairs, held-out split by figure",
            outs=("artifacts/pairs.jsonl",),
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
            outs=("artifacts/embeddings",),
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
            headline="vital.selector.stage:headline",
            doc="train the selection model, score every candidate",
            params=("selector",),
            outs=("models/selector", "artifacts/scores.jsonl", "artifacts/scores_by_weight.jsonl"),
            plots=(
                Plot("metrics/plots/select_curve.csv", "epoch", "val_agreement"),
                # agreement vs human_weight; `dvc plots diff` overlays experiments
                Plot(
                    "metrics/plots/select_weights.csv", "human_weight", "heldout_human_agreement", "scatter"
                ),
            ),
        ),
        Stage(
            "curate",
            "vital.curate:run_stage",
            "curate",
            reads=("artifacts/scores.jsonl", "artifacts/candidates.jsonl", "artifacts/sample.jsonl"),
            param_reads=("vital.curate:mix_files",),
            headline="vital.curate:headline",
            doc="top-k% subsets, same-size random baselines, mixtures",
            outs=("artifacts/curated",),
        ),
        Stage(
            "export",
            "vital.export:run_stage",
            "export",
            param_reads=("vital.export:curated_files", _IMAGES),
            doc="the release: curated subsets as LLaVA JSON + images and as a Hugging Face dataset with a card",
            # the dataset card records the selection that made the subsets
            params=("export", "sample", "generate", "judge", "labels", "selector", "curate"),
            outs=("artifacts/export",),
        ),
        Stage(
            "bakeoff",
            "vital.bakeoff.stage:run_stage",
            "bakeoff",
            reads=(
                "artifacts/candidates.jsonl",
                "artifacts/scores_by_weight.jsonl",
                "artifacts/judgments.jsonl",
                "artifacts/embeddings",
                # each method's upstream cost (seconds, API spend, clinician labels)
                "metrics/detail/embed.json",
                "metrics/detail/judge.json",
                "metrics/detail/labels.json",
                "metrics/detail/pairs.json",
                "metrics/detail/select.json",
            ),
            backends=(("bakeoff.quality", "vital.bakeoff.quality:QUALITY"),),
            param_reads=("vital.bakeoff.stage:ifd_model",),
            headline="vital.bakeoff.stage:headline",
            doc="selection methods compared on the same pool: subsets, quality, gain over random, cost",
            params=("bakeoff", "curate.policy"),
            # the quality CSV is drawn by dvc.yaml's top-level `plots` (a line per method)
            outs=("artifacts/bakeoff", Out("metrics/plots/bakeoff_quality.csv", cache=False)),
            comment="selection methods on the same pool (vital/bakeoff/methods.py): random x seeds, length, CLIP "
            "score,\njudge alone, selector at human_weight 0 and as configured, IFD; quality against random, and cost",
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
            args="--method ${item.method} --seed ${item.seed}",
            matrix=(("method", "${bakeoff.downstream_methods}"), ("seed", "${bakeoff.seeds}")),
            params=("bakeoff.downstream_keep", "tune"),
            outs=("models/bakeoff/${item.method}-s${item.seed}",),
            item="{method}-s{seed}",
            plots=(Plot("metrics/plots/bakeoff_tune/${item.method}-s${item.seed}.csv", "step", "loss"),),
            pipeline="bakeoff/dvc.yaml",
        ),
        Stage(
            "bakeoff_evaluate",
            "vital.bakeoff.downstream:evaluate_stage",
            "bakeoff_evaluate",
            param_reads=("vital.evaluate:eval_files", "vital.bakeoff.downstream:downstream_models"),
            backends=(("evaluate.hallucination", "vital.evaluate:HALLUCINATION_BACKENDS"),),
            doc="VQA of every bakeoff-tuned model, over seeds and minus random",
            params=("bakeoff.downstream_methods", "bakeoff.seeds", "evaluate"),
            headline="vital.bakeoff.downstream:headline",
            plots=(
                Plot("metrics/plots/bakeoff_downstream.csv", "method", "closed_accuracy", "bar_horizontal"),
            ),
            pipeline="bakeoff/dvc.yaml",
        ),
        Stage(
            "control_data",
            "vital.bakeoff.control:data_stage",
            "control_data",
            reads=("artifacts/sample.jsonl",),
            backends=(("bakeoff.control", "vital.bakeoff.control:CONTROL_WRITERS"),),
            doc="positive control: the same sampled figures with truth-written and with flawed conversations",
            params=("bakeoff.control", "bakeoff.control_figures", "bakeoff.seeds"),
            outs=("artifacts/control",),
            pipeline="bakeoff/dvc.yaml",
        ),
        Stage(
            "control_tune",
            "vital.bakeoff.control:tune_stage",
            "control_tune",
            reads=("artifacts/control",),
            param_reads=("vital.tune:base_model", _IMAGES),
            options=(
                Option("arm", str, "truth or flawed", required=True),
                Option("seed", int, "tune seed", required=True),
            ),
            doc="tune the base on one positive-control arm, one seed (the tune section's budget)",
            args="--arm ${item.arm} --seed ${item.seed}",
            matrix=(("arm", ("truth", "flawed")), ("seed", "${bakeoff.seeds}")),
            params=("tune",),
            outs=("models/control/${item.arm}-s${item.seed}",),
            item="{arm}-s{seed}",
            plots=(Plot("metrics/plots/control_tune/${item.arm}-s${item.seed}.csv", "step", "loss"),),
            pipeline="bakeoff/dvc.yaml",
        ),
        Stage(
            "control_evaluate",
            "vital.bakeoff.control:evaluate_stage",
            "control_evaluate",
            param_reads=("vital.evaluate:eval_files", "vital.bakeoff.control:control_models"),
            backends=(("evaluate.hallucination", "vital.evaluate:HALLUCINATION_BACKENDS"),),
            doc="positive control: truth - flawed per downstream metric over seeds, with its 95% t-interval",
            params=("bakeoff.seeds", "bakeoff.control_figures", "evaluate", "world"),
            headline="vital.bakeoff.control:headline",
            pipeline="bakeoff/dvc.yaml",
        ),
        Stage(
            "tune",
            "vital.tune:run_stage",
            "tune",
            reads=("artifacts/curated/${item.subset}${tune.keep}.json",),
            param_reads=("vital.tune:base_model", _IMAGES, "vital.tune:launcher_files"),
            options=(Option("subset", str, "curated subset: top or random", required=True), _SEED),
            launcher="tune.launcher",
            doc="instruction-tune the base LLaVA on a curated subset",
            args="--subset ${item.subset} --seed ${item.seed}",
            matrix=(("subset", "${tune.subsets}"), ("seed", "${tune.seeds}")),
            params=("tune", "mlflow"),
            outs=("models/tuned/${item.subset}-s${item.seed}",),
            item="{subset}-s{seed}",
            plots=(Plot("metrics/plots/tune/${item.subset}-s${item.seed}.csv", "step", "loss"),),
            comment="the method's claim, measured: the same base tuned on the selector's top-k% and on a random "
            "subset\nof the same size, over several seeds; each model is hash-locked and reruns only when its data does",
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
            args="--model models/tuned/${item.subset}-s${item.seed} --name ${item.subset}-s${item.seed} "
            "--seed ${item.seed}",
            matrix=(("subset", "${tune.subsets}"), ("seed", "${tune.seeds}")),
            params=("finetune", "mlflow"),
            outs=("models/finetuned/${item.subset}-s${item.seed}",),
            item="{name}",
            plots=(Plot("metrics/plots/finetune/${item.subset}-s${item.seed}", "step", "loss"),),
            comment="LLaVA-Med's VQA protocol: every tuned model fine-tuned on each finetune.sets train split, so "
            "the\nevaluate stage can score it on the test split the way the field's VQA tables are made",
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
            args="--model ${tune.base} --name base-s${item} --seed ${item}",
            foreach="${tune.seeds}",
            params=("finetune", "tune.base", "mlflow"),
            outs=("models/finetuned/base-s${item}",),
            item="{name}",
            plots=(Plot("metrics/plots/finetune/base-s${item}", "step", "loss"),),
            comment="the control: the untuned base fine-tuned the same way, once per seed",
        ),
        Stage(
            "evaluate",
            "vital.evaluate:run",
            "evaluate",
            reads=("models/tuned",),
            param_reads=("vital.evaluate:eval_files", "vital.evaluate:extra_models"),
            headline="vital.evaluate:headline",
            backends=(("evaluate.hallucination", "vital.evaluate:HALLUCINATION_BACKENDS"),),
            doc="zero-shot VQA of every tuned model and the base",
            params=("evaluate", "tune.subsets", "tune.seeds"),
            outs=("artifacts/predictions",),
        ),
        Stage(
            "evaluate_finetuned",
            "vital.evaluate:run_finetuned",
            "evaluate_finetuned",
            reads=("models/finetuned",),
            param_reads=("vital.evaluate:eval_files",),
            headline="vital.evaluate:headline",
            doc="each fine-tuned model on the test split of its set",
            params=("evaluate", "finetune.sets", "tune.subsets", "tune.seeds"),
            outs=("artifacts/predictions_finetuned",),
            comment="LLaVA-Med's VQA protocol, scored: each fine-tuned model on the test split of the set it was "
            "tuned on",
        ),
        Stage(
            "chat_eval",
            "vital.chat_eval:run",
            "chat_eval",
            reads=("artifacts/predictions",),
            backends=(("chat_eval.backend", "vital.chat_eval:BACKENDS"),),
            param_reads=("vital.evaluate:eval_files",),
            headline="vital.chat_eval:headline",
            doc="judge-scored open answers and win rate",
            params=("chat_eval", "evaluate.sets", "evaluate.models"),
            outs=("artifacts/chat_eval",),
        ),
    )
}


PIPELINES = tuple(dict.fromkeys(s.pipeline for s in STAGES.values()))
"""Every dvc.yaml the stage table spans, relative to the repository root."""


def in_pipeline(pipeline: str) -> dict[str, Stage]:
    return {n: s for n, s in STAGES.items() if s.pipeline == pipeline}


def by_script(script: str) -> list[Stage]:
    """The dvc.yaml stages a script runs (finetune and finetune_base share one)."""
    return [s for s in STAGES.values() if (s.script or s.name) == script]


def get(name: str) -> Stage:
    try:
        return STAGES[name]
    except KeyError:
        raise KeyError(f"unknown stage {name!r}; stages: {', '.join(STAGES)}") from None
