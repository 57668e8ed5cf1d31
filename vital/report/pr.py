"""``vital report --base REV --md``: the pull-request report (params and headline metrics diffed by DVC,
selection and VQA from the stages' evidence with their spreads over seeds, curves, MLflow versions)."""

from __future__ import annotations

import json
import os
from pathlib import Path

from vital.freshness import Freshness
from vital.report.metrics import StageMetrics, file_at

SPREAD_KEYS = ("closed_accuracy", "open_recall", "closed_discrimination")


class ReportError(RuntimeError):
    """A revision, or a command the report needs, failed; the message names it."""


def _run(cmd: list[str], root: Path) -> str:
    import subprocess

    proc = subprocess.run(cmd, cwd=root, capture_output=True, text=True)
    if proc.returncode != 0:
        raise ReportError(
            f"`{' '.join(cmd)}` failed in {root}: {(proc.stderr or proc.stdout).strip()[-800:]}"
        )
    return proc.stdout


def _rev_name(root: Path, rev: str | None) -> str:
    if rev is None:
        return "workspace"
    return _run(["git", "rev-parse", "--short", rev], root).strip()


def resolve(root: Path, rev: str) -> str:
    """A git revision or a DVC experiment name (``dvc exp show``) -> its commit sha."""
    import subprocess

    proc = subprocess.run(
        ["git", "rev-parse", "--verify", "--quiet", f"{rev}^{{commit}}"],
        cwd=root,
        capture_output=True,
        text=True,
    )
    if proc.returncode == 0:
        return proc.stdout.strip()
    try:
        from dvc.scm import SCM, resolve_rev

        return resolve_rev(SCM(str(root)), rev)
    except Exception as e:
        raise ReportError(f"{rev!r} is neither a git revision nor a DVC experiment in {root}") from e


def _dvc_diff(kind: str, root: Path, base: str, head: str | None) -> dict:
    """``dvc params|metrics diff --json`` (the CLI: the same code and output users see)."""
    out = _run(["dvc", kind, "diff", base, *([head] if head else []), "--json"], root)
    return json.loads(out) if out.strip() else {}


def _num(x) -> str:
    if isinstance(x, bool) or x is None:
        return "-" if x is None else str(x)
    if isinstance(x, float):
        return f"{x:.4g}" if abs(x) < 1e-3 and x != 0 else f"{x:.3f}"
    return str(x)


def _signed(x) -> str:
    return "-" if not isinstance(x, int | float) else (f"{x:+.3f}" if isinstance(x, float) else f"{x:+d}")


def _spread(d: dict | None) -> str:
    if not isinstance(d, dict) or d.get("mean") is None:
        return "-"
    wins = f", {d['wins']}/{d.get('n')} wins" if "wins" in d else ""
    return f"{_signed(float(d['mean']))} ± {float(d.get('std') or 0):.3f} (n={d.get('n')}{wins})"


def _mean_sd(d: dict | None) -> str:
    if not isinstance(d, dict) or d.get("mean") is None:
        return "-"
    return f"{float(d['mean']):.3f} ± {float(d.get('std') or 0):.3f}"


# Markdown punctuation, backslash-escaped so a value is read literally; HTML specials (and the pipe, which
# would end a table cell even inside a code span) become entities, which GitHub and CommonMark decode as text
_MD_PUNCT = frozenset("\\`*_[]!~")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "|": "&#124;"}


def md_text(value) -> str:
    """Any value (a param, a metric key, a model name) as literal text inside one Markdown table cell:
    no tag, link, emphasis or code span of its own, and a line break is a ``<br>`` instead of the table's end."""
    out = []
    for ch in str(value).replace("\r\n", "\n").replace("\r", "\n"):
        if ch == "\n":
            out.append("<br>")
        elif ch in _ENTITIES:
            out.append(_ENTITIES[ch])
        elif ch in _MD_PUNCT:
            out.append("\\" + ch)
        else:
            out.append(ch)
    return "".join(out)


def md_code(value) -> str:
    """``value`` in a code font, read literally: a backtick span when it can hold the value (no backtick or
    line break; the table escapes pipes), else an HTML ``<code>`` around the :func:`md_text` escape."""
    text = str(value)
    if text.strip() and not any(c in text for c in "`\\\r\n"):
        return f"`{text}`"
    return f"<code>{md_text(text)}</code>"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += [
        "| " + " | ".join(str(c).replace("|", "\\|").replace("\n", "<br>") for c in r) + " |" for r in rows
    ]
    return out


def _params_section(diff: dict) -> list[str]:
    rows = [
        [md_code(key), md_code(v.get("old")), md_code(v.get("new"))]
        for file, keys in sorted(diff.items())
        for key, v in sorted(keys.items())
    ]
    if not rows:
        return ["No params changed."]
    return _table(["param", "base", "this PR"], rows)


def _metrics_section(diff: dict, limit: int) -> list[str]:
    """``dvc metrics diff`` of the headline files (vital/stats.py): the numbers compared across runs, never a
    wall time or a listed example, so every row is a result that moved."""
    rows = []
    for file, keys in sorted(diff.items()):
        for key, v in sorted(keys.items()):
            rows.append(
                [
                    md_text(file),
                    md_code(key),
                    md_text(_num(v.get("old"))),
                    md_text(_num(v.get("new"))),
                    _signed(v.get("diff")),
                ]
            )
    if not rows:
        return ["No headline metric changed."]
    lines = _table(["file", "metric", "base", "this PR", "change"], rows[:limit])
    if len(rows) > limit:
        rest = _table(["file", "metric", "base", "this PR", "change"], rows[limit:])
        lines += [
            "",
            f"<details><summary>{len(rows) - limit} more changed metrics</summary>",
            "",
            *rest,
            "</details>",
        ]
    return lines


def _select_section(old: dict, new: dict) -> list[str]:
    if not old and not new:
        return ["No select evidence (`metrics/detail/select.json`) at either revision."]
    ho, hn = old.get("heldout_human", {}), new.get("heldout_human", {})

    def agree(h, who):
        return (h.get(who) or {}).get("agreement")

    rows = [
        ["`selector.human_weight` used", _num(old.get("human_weight")), _num(new.get("human_weight")), ""]
    ]
    for who in ("selector", "judge", "random", "clinician_vs_clinician"):
        a, b = agree(ho, who), agree(hn, who)
        change = _signed(b - a) if isinstance(a, int | float) and isinstance(b, int | float) else "-"
        rows.append([f"held-out clinician agreement: {who}", _num(a), _num(b), change])
    for key in ("selector_minus_judge", "selector_minus_weight0"):
        a, b = ho.get(key) or {}, hn.get(key) or {}
        if a or b:
            rows.append(
                [
                    f"{key.replace('_', ' ')} (95% CI)",
                    f"{_signed(a.get('difference'))} {a.get('ci95', '')}",
                    f"{_signed(b.get('difference'))} {b.get('ci95', '')}",
                    "",
                ]
            )
    pairs = hn.get("pairs") or ho.get("pairs")
    return [
        f"Held-out clinician pairs: {pairs}.",
        "",
        *_table(["selection", "base", "this PR", "change"], rows),
    ]


def _vqa_section(old: dict, new: dict, title: str, stale: str | None = None) -> list[str]:
    """``stale``: why this PR's side is not the result of its code and params (None: it is, or unknown)."""
    lines = [f"> **{title}: {md_text(stale)}**", ""] if stale else []
    for set_name in sorted(k for k in set(old) | set(new) if not k.startswith("_")):
        o, n = old.get(set_name) or {}, new.get(set_name) or {}
        if not isinstance(o, dict) or not isinstance(n, dict):
            continue
        rows = []
        for group in ("top_over_seeds", "random_over_seeds", "base_over_seeds"):
            for key in SPREAD_KEYS:
                a, b = (o.get(group) or {}).get(key), (n.get(group) or {}).get(key)
                if a or b:
                    rows.append([f"{group.replace('_over_seeds', '')} {key}", _mean_sd(a), _mean_sd(b)])
        for gain in ("top_minus_random", "top_minus_base", "random_minus_base"):
            for key in SPREAD_KEYS:
                a, b = (o.get(gain) or {}).get(key), (n.get(gain) or {}).get(key)
                if a or b:
                    rows.append([f"**{gain.replace('_minus_', ' − ')}** {key}", _spread(a), _spread(b)])
        if rows and o == n and not stale:  # both sides are the code in force's result: keep it short
            lines += [f"<details><summary>{md_text(set_name)}, {title}: unchanged</summary>", ""]
            lines += _table(["", "base", "this PR"], rows) + ["</details>", ""]
        elif rows:
            lines += [f"**{md_text(set_name)}**, {title} (mean ± sd over seeds):", ""]
            lines += _table(["", "base", "this PR"], rows) + [""]
    return (
        lines
        if any(not x.startswith("> ") and x for x in lines)
        else [
            *lines,
            f"No {title} metrics at either revision.",
        ]
    )


def _csv_at(root: Path, rev: str | None, path: str) -> tuple[list[str], list[list[float]]] | None:
    import csv
    import io

    text = file_at(root, rev, path)
    if not text:
        return None
    rows = list(csv.reader(io.StringIO(text)))
    if len(rows) < 2:
        return None
    try:
        return rows[0], [[float(c) for c in r] for r in rows[1:] if r]
    except ValueError:
        return None


def _plot_files(root: Path, rev: str | None) -> set[str]:
    if rev is None:
        base = Path(root) / "metrics" / "plots"
        return {p.relative_to(root).as_posix() for p in base.rglob("*.csv")} if base.is_dir() else set()
    import subprocess

    out = subprocess.run(
        ["git", "ls-tree", "-r", "--name-only", rev, "metrics/plots"],
        cwd=root,
        capture_output=True,
        text=True,
    ).stdout
    return {p for p in out.split() if p.endswith(".csv")}


def render_curves(root: Path, base: str, head: str | None, out_dir: Path, limit: int = 12) -> list[Path]:
    """A PNG per plot CSV (``metrics/plots/**.csv``) that differs between the revisions: base dashed, PR solid.

    matplotlib (installed with mlflow) draws them; an empty list if it cannot be imported."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return []
    out_dir = Path(out_dir)
    written = []
    for path in sorted(_plot_files(root, base) | _plot_files(root, head)):
        a, b = _csv_at(root, base, path), _csv_at(root, head, path)
        if a == b or len(written) >= limit:
            continue
        header = (b or a)[0]
        fig, axes = plt.subplots(1, len(header) - 1, figsize=(4.2 * (len(header) - 1), 3.0), squeeze=False)
        for i, col in enumerate(header[1:], start=1):
            ax = axes[0][i - 1]
            for data, style, label in ((a, "--", "base"), (b, "-", "this PR")):
                if data and col in data[0]:
                    j = data[0].index(col)
                    ax.plot([r[0] for r in data[1]], [r[j] for r in data[1]], style, label=label, marker=".")
            xs = sorted({r[0] for d in (a, b) if d for r in d[1]})
            gaps = [y - x for x, y in zip(xs, xs[1:], strict=False)]
            if (
                gaps and min(xs) >= 0 and max(gaps) > 50 * min(gaps)
            ):  # a grid like human_weight 0, 1, ..., 1000
                ax.set_xscale("symlog", linthresh=1)
            ax.set_xlabel(header[0])
            ax.set_ylabel(col)
            ax.legend(fontsize=7)
        fig.suptitle(path, fontsize=9)
        fig.tight_layout()
        png = out_dir / (path.removeprefix("metrics/plots/").removesuffix(".csv").replace("/", "__") + ".png")
        png.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(png, dpi=80)
        plt.close(fig)
        written.append(png)
    return written


def _mlflow_section(root: Path, head: str | None) -> list[str]:
    """Registered model versions whose run was logged from the PR's commit (every version if head is the
    workspace and none match HEAD)."""
    from vital.gitrepo import git_commit
    from vital.lineage import tracking_uri

    uri = tracking_uri(root)
    db = uri.removeprefix("sqlite:///")
    if uri.startswith("sqlite:///") and not Path(db).is_file():
        return [f"No MLflow tracking store at `{uri}`."]
    import mlflow
    from mlflow import MlflowClient

    mlflow.set_tracking_uri(uri)
    client = MlflowClient()
    commit = _run(["git", "rev-parse", head], root).strip() if head else git_commit(root)[0]
    # a model made by `dvc repro` before its results were committed carries the parent commit, dirty
    parent = _run(["git", "rev-parse", f"{commit}^"], root).strip() if head else commit
    rows = []
    for model in client.search_registered_models():
        for v in client.search_model_versions(f"name='{model.name}'"):
            logged = v.tags.get("git_commit")
            if logged == commit and (head or v.tags.get("git_dirty") != "True"):
                made = f"`{commit[:7]}`"
            elif logged == parent and v.tags.get("git_dirty") == "True":
                made = f"`{parent[:7]}` + uncommitted changes"
            else:
                continue
            rows.append([md_code(model.name), md_text(v.version), md_code(v.run_id), made, md_code(v.source)])
    if not rows:
        return [f"No registered model version was logged from commit `{(commit or '?')[:12]}` in `{uri}`."]
    rows.sort(key=lambda r: (r[0], int(r[1])))
    return _table(["registered model", "version", "MLflow run", "logged from", "source"], rows)


def _workspace_freshness(root: Path) -> Freshness | None:
    from vital.freshness import check

    try:
        return check(root)
    except Exception:  # not a DVC repository, or DVC cannot read it: report without marks
        return None


def _pr_stale(freshness: Freshness | None, stage: str) -> list[str]:
    why = freshness.of(stage) if freshness is not None else None
    return [f"> **{md_text(why)}**", ""] if why and why.startswith("stale") else []


def pr_report(
    root: Path,
    base: str,
    head: str | None = None,
    images: Path | None = None,
    metrics_limit: int = 40,
    mlflow: bool = True,
) -> str:
    """Markdown for a pull request: params changed, metrics diff, selection and VQA deltas with their spreads
    over seeds, curves (PNGs under ``images``, linked relative to ``root``), MLflow runs and versions."""
    root = Path(root)
    freshness = _workspace_freshness(root) if head is None else None
    names = (base, head)
    base, head = resolve(root, base), (None if head is None else resolve(root, head))

    def label(name: str | None, sha: str | None) -> str:
        short = _rev_name(root, sha)
        return short if name in (None, sha) or name.startswith(short) else f"{name} ({short})"

    lines = [f"## vital: `{label(names[0], base)}` → `{label(names[1], head)}`", ""]
    lines += ["### Params changed", "", *_params_section(_dvc_diff("params", root, base, head)), ""]
    old, new = StageMetrics(root, base), StageMetrics(root, head)
    sel_old, sel_new = old.detail("select"), new.detail("select")
    lines += ["### Selection", "", *_pr_stale(freshness, "select"), *_select_section(sel_old, sel_new), ""]
    lines += ["### VQA", ""]
    for stage, title in (("evaluate", "zero-shot"), ("evaluate_finetuned", "fine-tuned")):
        stale = freshness.of(stage) if freshness is not None else None
        lines += _vqa_section(old.detail(stage), new.detail(stage), title, stale)
    lines += ["### Metrics diff (`dvc metrics diff`, headline numbers)", ""]
    lines += [*_metrics_section(_dvc_diff("metrics", root, base, head), metrics_limit), ""]
    if images is not None:
        pngs = render_curves(root, base, head, images)
        lines += ["### Curves that changed", ""]
        if pngs:
            lines += [f"![{p.stem}]({Path(os.path.relpath(p, root)).as_posix()})" for p in pngs]
        else:
            lines += ["No plot CSV changed (or matplotlib is missing)."]
        lines += [""]
    if mlflow:
        lines += ["### MLflow", "", *_mlflow_section(root, head), ""]
    return "\n".join(lines).rstrip() + "\n"
