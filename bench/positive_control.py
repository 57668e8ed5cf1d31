"""One attempt at making the downstream instrument see: the positive control at a chosen budget.

    python bench/positive_control.py --tag e5 [--figures 480] [--seeds 0 1 2] [--set tune.epochs=8 ...]
    python bench/positive_control.py --tag e5 --merge e5-s0 e5-s1 e5-s2   # seeds run as separate processes

Tunes the base on the truth-written and the flawed conversations of the same figures
(:mod:`vital.demo.positive_control`) per seed, with params.yaml's tune section changed by the options,
evaluates every model as ``control_evaluate`` does (closed accuracy, open recall, hallucination rate), and
writes truth - flawed per metric with its 95% t-interval to ``bench/results/positive_control_<tag>.json``
(models and data under ``--work``, deleted unless ``--keep``). Prints the summary and the CPU seconds.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import time
from pathlib import Path

import yaml

from vital.bakeoff.control import control_metrics, difference, domain_balanced, evaluate_model
from vital.demo.positive_control import ARMS, control_conversations
from vital.io import read_jsonl, write_json
from vital.params import Params, load_params
from vital.paths import Paths
from vital.world import load_truth

RESULTS = Path("bench/results")


def cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def override(p: Params, settings: list[str]) -> Params:
    raw = p.model_dump(mode="json")
    for s in settings:
        key, _, value = s.partition("=")
        *parents, leaf = key.split(".")
        node = raw
        for k in parents:
            node = node[k]
        node[leaf] = yaml.safe_load(value)
    return Params.model_validate(raw)


def differences(per: dict[str, dict]) -> dict:
    return {
        m: difference(
            {s: r[m] for s, r in per["truth"].items() if r.get(m) is not None},
            {s: r[m] for s, r in per["flawed"].items() if r.get(m) is not None},
            direction,
        )
        for m, direction in control_metrics(per).items()
        if any(m in r for r in per["truth"].values())  # results from before a metric was added lack it
    }


def merge(tag: str, parts: list[str]) -> None:
    """One result from runs of the same setting on different seeds."""
    runs = [json.loads((RESULTS / f"positive_control_{t}.json").read_text()) for t in parts]
    per: dict[str, dict] = {a: {} for a in ARMS}
    for run in runs:
        for arm in ARMS:
            per[arm].update(run["per_seed"][arm])
    result = {
        "tag": tag,
        "parts": parts,
        "overrides": runs[0]["overrides"],
        "figures": runs[0]["figures"],
        "seeds": sorted(int(s) for s in per["truth"]),
        "per_seed": per,
        "truth_minus_flawed": differences(per),
        "tune_cpu_s_mean": round(sum(r["tune_cpu_s_mean"] for r in runs) / len(runs), 1),
        "cpu_s": round(sum(r["cpu_s"] for r in runs), 1),
        "wall_s": max(r["wall_s"] for r in runs),
    }
    write_json(RESULTS / f"positive_control_{tag}.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "per_seed"}, indent=1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--tag", required=True)
    ap.add_argument("--figures", type=int, default=480)
    ap.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    ap.add_argument("--set", nargs="*", default=[], help="params overrides, e.g. tune.epochs=8")
    ap.add_argument("--work", type=Path, default=Path(".vital/positive_control"))
    ap.add_argument("--keep", action="store_true")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (1 wastes least on a shared CPU)")
    ap.add_argument("--merge", nargs="+", default=None, help="combine these tags' per-seed results instead")
    args = ap.parse_args()
    if args.merge:
        return merge(args.tag, args.merge)
    import torch

    from vital.llava import tune

    torch.set_num_threads(args.threads)

    start, cpu0 = time.perf_counter(), cpu_seconds()
    p = override(load_params(Path("params.yaml")), args.set)
    paths = Paths(Path("."))
    work = args.work / args.tag
    records = domain_balanced(list(read_jsonl(paths.sample)), args.figures)
    truth = load_truth(paths.truth)
    per: dict[str, dict[int, dict]] = {a: {} for a in ARMS}
    tune_cpu = []
    for arm in ARMS:
        write_json(work / f"{arm}.json", control_conversations(records, truth, arm, seed=0))
    for seed in args.seeds:  # both arms per seed first, so a run cut short still has paired seeds
        for arm in ARMS:
            t0 = cpu_seconds()
            out = work / f"{arm}-s{seed}"
            if not (out / "config.json").is_file():
                tp = p.tune.model_copy(update={"seed": seed})
                tune.run(
                    tp.base, work / f"{arm}.json", paths.corpus, out, tp, work / "ckpt" / f"{arm}-s{seed}"
                )
            tune_cpu.append(cpu_seconds() - t0)
            per[arm][seed] = evaluate_model(p, paths, out, f"{arm}-s{seed}")["demo"]
            print(arm, seed, per[arm][seed], round(cpu_seconds() - cpu0, 1), flush=True)
    result = {
        "tag": args.tag,
        "overrides": args.set,
        "figures": len(records),
        "seeds": args.seeds,
        "per_seed": per,
        "truth_minus_flawed": differences(per),
        "tune_cpu_s_mean": round(sum(tune_cpu) / len(tune_cpu), 1),
        "cpu_s": round(cpu_seconds() - cpu0, 1),
        "wall_s": round(time.perf_counter() - start, 1),
    }
    write_json(RESULTS / f"positive_control_{args.tag}.json", result)
    print(json.dumps({k: v for k, v in result.items() if k != "per_seed"}, indent=1))
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
