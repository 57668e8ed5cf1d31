"""``vital plan``: what ``dvc repro`` would send and run, from the params in force, before anything is paid for.

- The sample: ``artifacts/sample.jsonl`` is used only when ``dvc.lock`` shows it was written from these params
  and inputs (the sample stage's params, file deps and output all match); otherwise the sample is recomputed
  into a temporary folder (the workspace is not touched), so a leftover sample of another profile is never
  priced.
- generate, judge and chat_eval: requests, cache hits, tokens and cost at the rate of their ``mode``
  (``batch``: the Batch API's half rate). generate builds every request as the stage would (figures whose
  image is not fetched yet are priced as they will be sent); judge is bounded by ``generate.candidates``
  candidates per figure whose answers reach ``generate.max_tokens``, unless the candidates on disk are the
  current ones; chat_eval prices answers not predicted yet at ``evaluate.max_new_tokens``.
- embed, tune and finetune: GPU-hours and memory per GPU from the model's size, the method, batch and length
  (vital.memory; GPU throughput and count are this command's options, not params).
"""

from __future__ import annotations

import tempfile
from dataclasses import dataclass
from pathlib import Path

import yaml

from vital import hub
from vital.artifacts.sample import read_sample
from vital.curate import top_count
from vital.drops import Drops
from vital.dvc_repo import Lock, file_md5
from vital.params import Params
from vital.paths import Paths, is_local
from vital.schema import Candidate, Turn


@dataclass(frozen=True)
class PlanPaths(Paths):
    """The repository's paths with the sample (and, when stale, the candidates) read from elsewhere."""

    sample_file: Path | None = None
    candidates_file: Path | None = None

    @property
    def sample(self) -> Path:
        return self.sample_file or super().sample

    @property
    def candidates(self) -> Path:
        return self.candidates_file or super().candidates


def _dig(tree, dotted: str):
    for part in dotted.split("."):
        if not isinstance(tree, dict) or part not in tree:
            return None
        tree = tree[part]
    return tree


def lock_current(stage: str, params_file: Path, root: Path, outs: tuple[str, ...]) -> tuple[bool, str]:
    """Whether ``dvc.lock`` shows ``stage``'s ``outs`` were written from these params and file deps."""
    if not (root / "dvc.lock").is_file():
        return False, "no dvc.lock"
    entry = Lock.read(root, ("dvc.yaml",)).stages.get(stage)
    if not entry:
        return False, f"{stage} is not in dvc.lock"
    raw = yaml.safe_load(params_file.read_text(encoding="utf-8")) or {}
    for file_params in entry.params.values():
        for key, value in file_params.items():
            if _dig(raw, key) != value:
                return False, f"{stage} ran with other params ({key})"
    for path, md5 in entry.deps.items():
        # a folder dep (the corpus images) is left to DVC: hashing it here could take as long as the stage
        if not str(md5).endswith(".dir") and _file_md5(root / path) != md5:
            return False, f"{path} changed since {stage} ran"
    for out in outs:
        if out not in entry.outs or _file_md5(root / out) != entry.outs[out]:
            return False, f"{out} is not the one {stage} wrote last"
    return True, "current"


def _file_md5(path: Path) -> str | None:
    return file_md5(path) if path.is_file() else None


def sample_in_force(params: Params, params_file: Path, paths: Paths, tmp: Path) -> tuple[Path, str]:
    """The sample ``dvc repro`` would generate from: the workspace's when current, else recomputed in ``tmp``."""
    from vital.sample import run

    current, why = lock_current("sample", params_file, paths.root, ("artifacts/sample.jsonl",))
    if current:
        return paths.sample, "artifacts/sample.jsonl (current)"
    run(paths.figures, tmp / "sample.jsonl", tmp / "sample.json", params.sample)
    return tmp / "sample.jsonl", f"recomputed ({why})"


# ------------------------------------------------------------------ paid requests
def _judge_bound(params: Params, paths: PlanPaths) -> dict:
    """Judge requests for candidates not generated yet: ``generate.candidates`` per figure, each as long as
    ``generate.max_tokens`` allows (about 4 characters a token), so the input estimate is an upper bound."""
    from vital.judge import backend_for
    from vital.llm.accounting import dry_run_estimate

    jp, gp = params.judge, params.generate
    if jp.backend == "heuristic":
        return {
            "stage": "judge",
            "backend": "heuristic",
            "requests_to_send": 0,
            "estimated_cost_usd_max": 0.0,
        }
    backend = backend_for(params, paths)
    cache = backend.runtime.open_cache()
    figures = list(read_sample(paths.sample, Drops()).values())
    half = "x" * (2 * gp.max_tokens)  # the answer budget split between a question and an answer

    def requests():
        for rec in figures:
            for k in range(gp.candidates):
                turns = [Turn(**{"from": "human", "value": half}), Turn(**{"from": "gpt", "value": half})]
                cand = Candidate(
                    id=f"{rec.pair_id}#{k}",
                    pair_id=rec.pair_id,
                    image=rec.image,
                    domain=rec.primary_domain,
                    conversations=turns,
                )
                yield backend.request(cand, rec, "data:image/png;base64,", 0)

    est = dry_run_estimate(requests(), cache, backend.runtime.price, jp, len(figures), Drops(), "judge")
    est["candidates"] = len(figures) * gp.candidates
    est["note"] += "; candidates not generated yet: answers bounded by generate.max_tokens"
    return est


def paid_requests(params: Params, params_file: Path, paths: Paths, tmp: Path) -> tuple[list[dict], str]:
    from vital import chat_eval, generate, judge

    sample, how = sample_in_force(params, params_file, paths, tmp)
    plan_paths = PlanPaths(paths.root, sample_file=sample)
    current, _ = lock_current("generate", params_file, paths.root, ("artifacts/candidates.jsonl",))
    judged = judge.dry_run if current and sample == paths.sample else _judge_bound
    rows = [
        _row("generate", lambda: generate.dry_run(params, plan_paths, price_unfetched=True)),
        _row("judge", lambda: judged(params, plan_paths)),
        _row("chat_eval", lambda: chat_eval.dry_run(params, plan_paths)),
    ]
    return rows, how


def _row(stage: str, estimate) -> dict:
    """One stage's estimate; an input it cannot read yet (an eval set not downloaded) is the row's note."""
    from vital.stage import ERRORS, _one_line

    try:
        return estimate()
    except (*ERRORS, ValueError) as e:
        return {
            "stage": stage,
            "requests_to_send": None,
            "estimated_cost_usd_max": None,
            "note": f"not priced: {_one_line(e)}",
        }


# ------------------------------------------------------------------ GPU work
@dataclass(frozen=True)
class Gpu:
    count: int = 1
    tflops: float = 312.0  # A100 bf16 dense peak
    mfu: float = 0.4  # the share of it a training loop reaches


def _sampled_count(sample: Path) -> int:
    return len(read_sample(sample, Drops()))


def _source(param: str, spec: str, revision: str | None, root: Path) -> tuple[str, str | None]:
    """A local checkpoint dir as it is (named by the param when missing), or a hub id resolved first (one line
    naming the param when unknown or unreachable)."""
    if is_local(spec, root):
        if not (root / spec / "config.json").is_file():
            raise FileNotFoundError(f"{param}: {spec} has no config.json yet (a stage writes it, or a typo)")
        return str(root / spec), None
    return spec, hub.resolve(param, spec, revision, root).commit


def _training_rows(params: Params, paths: Paths, figures: int, gpu: Gpu) -> list[dict]:
    from vital.evaluate import tuned_models
    from vital.memory import load_shape, plan_training
    from vital.vqa.loaders import read_sets

    rows = []
    tp, fp = params.tune, params.finetune
    candidates = figures * params.generate.candidates
    shape, why = None, ""
    try:
        source, commit = _source("tune.base", tp.base, tp.base_revision, paths.root)
        shape = load_shape(source, commit, paths.root)
    except Exception as e:  # noqa: BLE001 - an unreachable hub or a missing checkpoint: the row says why
        why = f"model size unknown: {' '.join(str(e).split())[:200]}"
    runs = len(tp.subsets) * len(tp.seeds)
    # the pool curate cuts: one candidate per figure under best_per_figure
    pool = figures if params.curate.policy == "best_per_figure" else candidates
    examples = top_count(pool, tp.keep)
    if shape is None:
        rows.append({"stage": "tune", "model": tp.base, "method": tp.method, "runs": runs, "note": why})
    else:
        plan = plan_training(tp.base, shape, tp, examples, runs, gpu.count, gpu.tflops, gpu.mfu)
        rows.append(
            {
                "stage": "tune",
                **plan.to_dict(),
                "note": f"top {tp.keep}% of {pool} candidates ({params.curate.policy})",
            }
        )
    if fp.sets:
        try:
            train = sum(
                len(s.items) for s in read_sets(fp.sets, paths.root, params.evaluate.max_invalid_fraction)
            )
        except Exception as e:  # noqa: BLE001 - the train files are named by params and may not be there yet
            train, note = 0, f"train sets not readable: {' '.join(str(e).split())[:160]}"
        else:
            note = f"{len(fp.sets)} train sets, {train} questions"
        models = len(tuned_models(params)) + 1  # every tuned model and the untuned base
        if shape is None:
            rows.append(
                {"stage": "finetune", "model": tp.base, "method": fp.method, "runs": models, "note": why}
            )
        else:
            plan = plan_training(tp.base, shape, fp, train, models, gpu.count, gpu.tflops, gpu.mfu)
            rows.append({"stage": "finetune", **plan.to_dict(), "note": note})
    return rows


def _embed_row(params: Params, paths: Paths, figures: int, gpu: Gpu) -> dict:
    """BiomedCLIP forward passes: every figure's image and every candidate's text, at fp32; size from the
    checkpoint's weight file (4 bytes a parameter)."""
    from vital.memory import checkpoint_params

    ep = params.embed
    candidates = figures * params.generate.candidates
    param, spec, revision = "embed.backbone", ep.backbone, ep.backbone_revision
    if (
        spec == "foundation" and params.foundation.backend == "pretrained"
    ):  # the checkpoint foundation records
        param, spec, revision = "foundation.clip", params.foundation.clip, params.foundation.clip_revision
    try:
        if spec.startswith("hf-hub:"):
            hub.resolve(param, spec, revision, paths.root)  # unknown or unreachable: fast, naming the param
        n = checkpoint_params(spec, revision, paths.root)
    except Exception as e:  # noqa: BLE001 - an unreachable hub or a missing checkpoint: the row says why
        why = " ".join(str(e).split())[:200]
        return {"stage": "embed", "model": spec, "note": f"model size unknown: {why}"}
    tokens = figures * 197 + candidates * 256  # ViT-B/16 at 224 px; BiomedCLIP's text context
    seconds = 2 * (n / 2) * tokens / (gpu.tflops * 1e12 * gpu.mfu)  # each tower about half the parameters
    weights = n * 4
    activations = ep.batch_size * 256 * 768 * 4 * 8  # one layer live at inference, a few buffers of it
    return {
        "stage": "embed",
        "model": spec,
        "runs": 1,
        "examples": candidates,
        "gpu_hours": float(f"{seconds / 3600:.3g}"),
        "memory_gib": round((weights + activations) / 2**30, 2),
        "note": f"{figures} images, {candidates} texts, forward only",
    }


def gpu_work(params: Params, paths: Paths, sample: Path, gpu: Gpu) -> list[dict]:
    figures = _sampled_count(sample)
    return [_embed_row(params, paths, figures, gpu), *_training_rows(params, paths, figures, gpu)]


# ------------------------------------------------------------------ the command
def plan(params: Params, params_file: Path, paths: Paths, gpu: Gpu = Gpu()) -> dict:
    with tempfile.TemporaryDirectory(prefix="vital-plan-") as tmp:
        requests, how = paid_requests(params, params_file, paths, Path(tmp))
        sample = paths.sample if how.endswith("(current)") else Path(tmp) / "sample.jsonl"
        gpus = gpu_work(params, paths, sample, gpu)
    costs = [r.get("estimated_cost_usd_max", r.get("estimated_cost_usd")) for r in requests]
    return {
        "params": str(params_file),
        "sample": how,
        "requests": requests,
        "total_cost_usd_max": None if None in costs else round(sum(costs), 4),
        "gpu": {"count": gpu.count, "tflops": gpu.tflops, "mfu": gpu.mfu},
        "gpu_work": gpus,
    }


def _n(v) -> str:
    if v is None:
        return "?"
    return f"{v:,.4f}" if isinstance(v, float) else f"{v:,}"


def format_plan(p: dict) -> str:
    lines = [f"vital plan: {p['params']}; sample: {p['sample']}", ""]
    head = ("stage", "mode", "requests", "cached", "input tok", "output tok (max)", "USD (max)")
    rows = [head]
    for r in p["requests"]:
        rows.append(
            (
                r.get("stage") or r.get("backend", "?"),
                "offline" if r.get("backend") in ("template", "heuristic") else r.get("mode", "online"),
                _n(r.get("requests_to_send", r.get("requests"))),
                _n(r.get("cached", 0)),
                _n(r.get("estimated_input_tokens", 0)),
                _n(r.get("estimated_output_tokens_max", 0)),
                _n(r.get("estimated_cost_usd_max", r.get("estimated_cost_usd"))),
            )
        )
    rows.append(("total", "", "", "", "", "", _n(p["total_cost_usd_max"])))
    lines += _table(rows)
    g = p["gpu"]
    lines += ["", f"GPU work at {g['mfu']:.0%} of {g['tflops']:g} TFLOPS on {g['count']} GPU(s):"]
    rows = [("stage", "model", "method", "runs", "steps/run", "GPU-h", "GiB/GPU", "note")]
    for r in p["gpu_work"]:
        rows.append(
            (
                r["stage"],
                r.get("model", ""),
                r.get("method", "-"),
                _n(r.get("runs")),
                _n(r.get("steps", "-")) if "steps" in r else "-",
                _n(r.get("gpu_hours")),
                _n(r.get("memory_gib")),
                r.get("note", ""),
            )
        )
    lines += _table(rows)
    notes = [f"{r.get('stage') or r.get('backend')}: {r['note']}" for r in p["requests"] if r.get("note")]
    return "\n".join(lines + [""] + notes)


def _table(rows: list[tuple]) -> list[str]:
    widths = [max(len(str(r[i])) for r in rows) for i in range(len(rows[0]))]
    return ["  ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)).rstrip() for r in rows]
