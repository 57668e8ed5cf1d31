"""The ``vital`` command line.

vital world                build the synthetic demo world into data/
vital params               validate params.yaml and print the resolved values
vital run STAGE            run one pipeline stage (same as `python stages/<script>.py`)
vital dag [--check|--write]   each stage's deps: the code it runs and the data it reads
vital generate --dry-run   count requests, estimate tokens and cost; send nothing
vital judge --dry-run      the same for judging
vital plan                 what `dvc repro` would send and train: requests, tokens, cost, GPU-hours, memory
vital annotate --annotator dr_smith   rank candidates in the browser into data/labels/dr_smith.jsonl
vital fetch-images URLS.jsonl --out data/corpus/shards   PMC OA packages -> figure shards + index
vital report --base origin/main --md  a pull-request report: params, metrics, selection/VQA deltas, curves
vital lineage vital-llava-top-s0@3    the chain behind a registered model, with digests and workspace drift
vital export artifacts/curated/top40.json --format llava --out release/llava   (or --format hf)
vital pretrain [--write]   retrain the demo's foundation + base from scratch; compare with data/pretrained
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from vital.params import Params, ParamsError, load_params
from vital.paths import Paths


def _world(args) -> int:
    from vital.world import build_world

    params = load_params(args.params)
    summary = build_world(Path(args.out), params.world)
    print(json.dumps(summary, indent=2))
    return 0


def _params(args) -> int:
    params = load_params(args.params)
    print(json.dumps(params.model_dump(mode="json"), indent=2))
    return 0


def _report(args) -> int:
    from vital.report import ReportError, pr_report, summary

    if args.results:
        from vital.results import write

        write(Paths(), Path("README.md"), Path("docs/results.md"))
        print("wrote docs/results.md and README.md's results block from the metrics files")
        return 0
    if not args.base:
        if args.md or args.head:
            print("vital report: --md and --head compare two revisions and need --base REV", file=sys.stderr)
            return 2
        freshness = None
        if not args.no_status:
            from vital.freshness import check

            try:
                freshness = check(Path("."))
            except Exception as e:  # not a DVC repository: the numbers without marks, and why
                print(f"vital report: stale results not marked ({' '.join(str(e).split())})", file=sys.stderr)
        print(summary(Paths(), freshness))
        return 0
    try:
        text = pr_report(Path("."), args.base, args.head, images=Path(args.images), mlflow=not args.no_mlflow)
    except ReportError as e:
        print(f"vital report: {e}", file=sys.stderr)
        return 2
    if args.out:
        Path(args.out).write_text(text)
    else:
        print(text, end="")
    return 0


def _lineage(args) -> int:
    from vital.lineage import format_trace, trace

    try:
        t = trace(args.model, Path("."))
    except LookupError as e:
        print(f"vital lineage: {e}", file=sys.stderr)
        return 2
    print(json.dumps(t, indent=2) if args.json else format_trace(t, everything=args.all))
    return 1 if args.check and t["mismatches"] else 0


def _annotate(args) -> int:
    from vital.annotate import AnnotationError, AnnotationSession, load_tasks, make_server
    from vital.annotate.server import WILDCARD, public_address

    paths = Paths()
    try:
        tasks = load_tasks(paths, args.annotator, args.seed, args.limit, args.overlap, args.order)
        session = AnnotationSession(paths, args.annotator, tasks)
        server = make_server(session, args.host, args.port)
    except (AnnotationError, OSError) as e:
        print(f"vital annotate: {e}", file=sys.stderr)
        return 2
    for line in session.unreadable:
        print(f"vital annotate: skipping unreadable line {line}; the other lines count", file=sys.stderr)
    host, port = server.server_address[:2]
    p = session.progress()
    if args.host in WILDCARD:
        print(
            f"vital annotate: WARNING: serving every network interface with no login: anyone who can reach "
            f"this machine on port {port} can see the figures and save rankings as {args.annotator}. "
            "Use it on a trusted network only.",
            file=sys.stderr,
        )
        url = f"http://{public_address()}:{port}/"
    else:
        url = f"http://{host}:{port}/"
    shared = f" (the first {args.overlap} shared by every annotator)" if args.overlap else ""
    if args.order != "sample":
        shared += f", {args.order} first"
    print(f"vital annotate: {p['ranked']} of {p['total']} figures ranked{shared}; open {url}", flush=True)
    print(
        f"labels go to {session.label_file} (use them with labels.backend: files); Ctrl-C stops", flush=True
    )
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()
    return 0


def _fetch_images(args) -> int:
    from vital.fetch import fetch_images
    from vital.fetch.options import options_from
    from vital.io import RecordError

    opts = options_from(args, verify=not args.no_verify)
    try:
        summary = fetch_images(Path(args.urls), Path(args.out), opts)
    except (RecordError, FileNotFoundError, ValueError, OSError) as e:
        print(f"vital fetch-images: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2))
    if not summary["fetched"]:
        print(
            f"vital fetch-images: fetched 0 of {summary['figures']} figures ({summary['lines_refused']} input "
            f"lines refused); reasons in {Path(args.out) / 'report.jsonl'}",
            file=sys.stderr,
        )
        return 1
    return 0


def _add_fetch_images(sub) -> None:
    f = sub.add_parser("fetch-images", help="download PMC OA packages once, write figures as tar shards")
    f.add_argument("urls", help="LLaVA-Med image-URL JSONL (pair_id, pmc_tar_url, image_file_path)")
    f.add_argument("--out", default="data/corpus/shards", help="shard folder (default: data/corpus/shards)")
    f.add_argument("--shard-size", type=int, default=2000, help="figures per shard (default: 2000)")
    f.add_argument("--workers", type=int, default=8, help="concurrent downloads (default: 8)")
    f.add_argument("--rate", type=float, default=3.0, help="requests per second per host (default: 3)")
    f.add_argument("--retries", type=int, default=5, help="retries on resets, timeouts, 5xx (default: 5)")
    f.add_argument("--backoff", type=float, default=1.0, help="first retry delay in s, doubled (default: 1)")
    f.add_argument("--timeout", type=float, default=60.0, help="socket timeout in s (default: 60)")
    f.add_argument("--max-side", type=int, default=None, help="downscale figures to this longer side")
    f.add_argument("--no-verify", action="store_true", help="trust done shards' size, skip rehashing them")
    f.add_argument(
        "--max-package-mb", type=float, default=2048, help="bytes per package, MiB (default: 2048)"
    )
    f.add_argument("--max-member-mb", type=float, default=64, help="bytes per figure, MiB (default: 64)")
    f.add_argument("--max-pixels", type=int, default=50_000_000, help="pixels per figure (default: 5e7)")
    f.add_argument("--package-s", type=float, default=1800, help="seconds per package (default: 1800)")
    f.set_defaults(func=_fetch_images)


def _export(args) -> int:
    from vital.export import export, provenance_of, selection_of
    from vital.failures import StageFailed
    from vital.io import RecordError

    curated, paths = Path(args.curated), Paths()
    card: dict = {"pretty_name": args.name or f"vital {curated.stem}"}
    if Path(args.params).is_file():  # the card states how the set was selected, when the pipeline says
        params = load_params(args.params)
        card |= {"selection": selection_of(params, curated.stem)} if curated.is_file() else {}
        card |= {"provenance": provenance_of(params, curated, paths.root)} if curated.is_file() else {}
    try:
        result = export(curated, args.format, Path(args.out), Path(args.image_root), card, args.shard_rows)
    except (RecordError, StageFailed, FileNotFoundError) as e:
        print(f"vital export: {e}", file=sys.stderr)
        return 2
    print(json.dumps(result, indent=2))
    return 0


def _add_export(sub) -> None:
    e = sub.add_parser("export", help="a curated set as LLaVA JSON + images, or a Hugging Face dataset")
    e.add_argument(
        "curated", help="curated set (JSON list of LLaVA records), e.g. artifacts/curated/top40.json"
    )
    e.add_argument("--format", choices=("llava", "hf"), required=True)
    e.add_argument("--out", required=True, help="output folder (replaced)")
    e.add_argument(
        "--image-root",
        default="data/corpus",
        help="folder the records' image paths and shard refs are relative to (default: data/corpus)",
    )
    e.add_argument("--shard-rows", type=int, default=5000, help="rows per Parquet shard (hf; default: 5000)")
    e.add_argument("--name", default=None, help="the dataset card's title (hf)")
    e.set_defaults(func=_export)


def _pretrain(args) -> int:
    from vital.demo.pretrain import PRETRAINED, pretrain

    params = load_params(args.params)
    problems = pretrain(params, Path("."), write=args.write, keep=Path(args.keep) if args.keep else None)
    for line in problems:
        print(f"vital pretrain: {line}", file=sys.stderr)
    if problems:
        return 1
    print(f"{PRETRAINED}: {'written' if args.write else 'retrained byte-identical'}")
    return 0


def _add_pretrain(sub) -> None:
    p = sub.add_parser("pretrain", help="retrain the demo's foundation + base; compare with data/pretrained")
    p.add_argument("--write", action="store_true", help="replace data/pretrained with the retrained models")
    p.add_argument("--keep", default=None, help="train into this folder (kept) instead of a temporary one")
    p.set_defaults(func=_pretrain)


def _run(args) -> int:
    from vital import stage
    from vital.pipeline import STAGES

    if args.stage not in STAGES:
        print(f"vital: unknown stage {args.stage!r}; stages: {', '.join(STAGES)}", file=sys.stderr)
        return 2
    stage.main(args.stage, [*args.rest, "--params", args.params])
    return 0


def _dag(args) -> int:
    from vital import dag
    from vital.pipeline import PIPELINES

    params = load_params(args.params)
    if args.write:
        added = dag.write_sections(Path(args.params), params)
        if added:
            print(f"{args.params}: added the sections {', '.join(added)} with the code defaults")
        for dvc_yaml in (Path(f) for f in PIPELINES):
            if dvc_yaml == Path("dvc.yaml") or dvc_yaml.is_file():  # a scratch repo may have only dvc.yaml
                changed = dag.write(dvc_yaml, params)
                print(f"{dvc_yaml}: regenerated {', '.join(changed) or 'no stage (already exact)'}")
        # the docs show the demo profile (the code defaults) whatever --params says
        if dag.write_docs(Params()):
            print(f"{dag.DOCS}: stage table regenerated")
        return 0
    found = [f"{f}: {line}" for f in PIPELINES if Path(f).is_file() for line in dag.problems(Path(f), params)]
    found += [f"{args.params}: no section {s!r}" for s in dag.missing_sections(Path(args.params), params)]
    found += dag.docs_problems(Params())
    if args.check:
        for line in found:
            print(f"vital dag: {line}", file=sys.stderr)
        if found:
            print(
                "vital dag: run `vital dag --write` to regenerate them from vital/pipeline.py",
                file=sys.stderr,
            )
        return 1 if found else 0
    for name, deps in dag.all_deps(params).items():
        print(f"{name}:\n  code: {' '.join(deps.code)}\n  data: {' '.join(deps.data)}")
    return 0


def _one_line_errors() -> tuple[type[Exception], ...]:
    """The errors a command ends on with one line: the stages' (vital.stage.ERRORS, openai's) and bad values."""
    from vital.stage import ERRORS, _api_errors

    return (*ERRORS, *_api_errors(), ValueError)


def _dry_run(module: str):
    def handler(args) -> int:
        if not args.dry_run:
            print(f"vital {module}: run the stage with `dvc repro {module}`; this command only has --dry-run")
            return 2
        import importlib

        from vital.stage import _one_line

        try:
            estimate = importlib.import_module(f"vital.{module}").dry_run(load_params(args.params), Paths())
        except _one_line_errors() as e:
            print(f"vital {module} --dry-run: {_one_line(e)}", file=sys.stderr)
            return 2
        print(json.dumps(estimate, indent=2))
        return 0

    return handler


def _plan(args) -> int:
    from vital.plan import Gpu, format_plan, plan
    from vital.stage import _one_line

    params = load_params(args.params)
    try:
        p = plan(params, Path(args.params), Paths(), Gpu(args.gpus, args.gpu_tflops, args.mfu))
    except _one_line_errors() as e:
        print(f"vital plan: {_one_line(e)}", file=sys.stderr)
        return 2
    print(json.dumps(p, indent=2) if args.json else format_plan(p))
    return 0


def _add_plan(sub) -> None:
    p = sub.add_parser(
        "plan", help="what `dvc repro` would send and train: requests, tokens, cost, GPU-hours"
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument("--gpus", type=int, default=1, help="GPUs per training run (default: 1)")
    p.add_argument(
        "--gpu-tflops", type=float, default=312.0, help="peak TFLOPS of one GPU (default: A100 bf16)"
    )
    p.add_argument("--mfu", type=float, default=0.4, help="share of the peak training reaches (default: 0.4)")
    p.set_defaults(func=_plan)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vital", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--params", default="params.yaml", help="parameters file (default: params.yaml)")
    sub = parser.add_subparsers(dest="command", required=True)

    world = sub.add_parser("world", help="build the synthetic demo world")
    world.add_argument("--out", default="data", help="output folder (default: data)")
    world.set_defaults(func=_world)

    sub.add_parser("params", help="validate and print parameters").set_defaults(func=_params)
    rep = sub.add_parser("report", help="key numbers of the last run; with --base, a pull-request report")
    rep.add_argument("--base", help="git revision to compare with (e.g. origin/main): writes the PR report")
    rep.add_argument("--head", help="revision to report on (default: the workspace)")
    rep.add_argument("--md", action="store_true", help="Markdown (the PR report's only format)")
    rep.add_argument("--out", help="write the report here instead of stdout")
    rep.add_argument(
        "--images", default=".vital/report", help="folder for the curve PNGs (default: .vital/report)"
    )
    rep.add_argument("--no-mlflow", action="store_true", help="leave out MLflow runs and registered versions")
    rep.add_argument(
        "--results",
        action="store_true",
        help="rewrite docs/results.md and README.md's results block from the metrics files",
    )
    rep.add_argument(
        "--no-status", action="store_true", help="skip DVC's status (sections are then not marked stale)"
    )
    rep.set_defaults(func=_report)

    lin = sub.add_parser(
        "lineage", help="the chain behind a registered model: inputs, digests, workspace drift"
    )
    lin.add_argument("model", help="registered model name, optionally @version (default: the latest)")
    lin.add_argument("--json", action="store_true", help="machine-readable output")
    lin.add_argument("--all", action="store_true", help="also list code files and metrics that still match")
    lin.add_argument("--check", action="store_true", help="exit 1 if the workspace no longer matches")
    lin.set_defaults(func=_lineage)

    dag = sub.add_parser("dag", help="each stage's deps (code closure + data) for these params")
    mode = dag.add_mutually_exclusive_group()
    mode.add_argument("--check", action="store_true", help="exit 1 if dvc.yaml's deps are not exact")
    mode.add_argument("--write", action="store_true", help="rewrite the deps in dvc.yaml")
    dag.set_defaults(func=_dag)

    run = sub.add_parser("run", help="run one stage")
    run.add_argument("stage")
    run.add_argument("rest", nargs=argparse.REMAINDER)
    run.set_defaults(func=_run)

    ann = sub.add_parser("annotate", help="rank candidate conversations in the browser (clinician labels)")
    ann.add_argument("--annotator", required=True, help="pseudonymous clinician id; names the label file")
    ann.add_argument(
        "--host",
        default="127.0.0.1",
        help="address to bind (default: this machine only; 0.0.0.0 serves the network, with no login)",
    )
    ann.add_argument("--port", type=int, default=8765, help="port (default: 8765; 0 picks a free one)")
    ann.add_argument("--limit", type=int, default=None, help="offer only the first N sampled figures")
    ann.add_argument("--seed", type=int, default=0, help="seed of the per-annotator candidate order")
    ann.add_argument(
        "--overlap",
        type=int,
        default=0,
        help="serve first N figures shared by every annotator (fixed set and order, for agreement); "
        "the rest in an order of each annotator's own",
    )
    ann.add_argument(
        "--order",
        choices=("sample", "uncertain", "disagree"),
        default="sample",
        help="sample (default): sample order; uncertain: figures whose candidates the selector rates "
        "closest first (artifacts/scores.jsonl); disagree: figures where judge and selector order the "
        "candidates most differently first (1 - Kendall tau); after the --overlap set, if any",
    )
    ann.set_defaults(func=_annotate)

    for name in ("generate", "judge", "chat_eval"):
        p = sub.add_parser(name, help=f"{name}: --dry-run estimates requests, tokens and cost")
        p.add_argument("--dry-run", action="store_true")
        p.set_defaults(func=_dry_run(name))
    _add_fetch_images(sub)
    _add_export(sub)
    _add_pretrain(sub)
    _add_plan(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ParamsError as e:
        print(f"vital: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
