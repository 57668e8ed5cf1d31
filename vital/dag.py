"""Each stage's true DVC dependencies: the code it runs and the data it reads, for the params in force.

Code: the stage script, then the static import closure (function-level imports included) of
``vital.stage`` and the stage's entry module, plus the module of every backend its params choose
(``vital.registry``). Data: the table's ``reads``, what each chosen backend reads, and the inputs params
name (evaluation sets, mixture files, local checkpoints). ``vital dag --write`` puts exactly that into
each stage's ``deps`` in dvc.yaml; every stage checks at start that dvc.yaml still covers it, so a code
edit can never leave an output stale, and a profile that does not use the demo does not depend on it.
"""

from __future__ import annotations

import ast
import importlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

from vital.params import Params
from vital.pipeline import STAGES, Stage, in_pipeline

PACKAGE = "vital"
LIBRARY = Path(__file__).resolve().parent  # the vital/ package directory
RUNNER = "vital.stage"  # what every stage script imports


class DagError(ValueError):
    """dvc.yaml's deps do not cover what a stage runs and reads; the message says how to fix it."""


# ------------------------------------------------------------------ import closure
def module_file(module: str) -> Path | None:
    if module != PACKAGE and not module.startswith(PACKAGE + "."):
        return None
    base = LIBRARY.joinpath(*module.split(".")[1:])
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def imports_of(module: str) -> frozenset[str]:
    """The vital modules ``module`` imports anywhere in its file (top level or inside functions)."""
    path = module_file(module)
    if path is None:
        return frozenset()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parent, base] if base else parent)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)  # `from pkg import module`
    return frozenset(m for m in found if module_file(m) is not None)


def closure(modules: Iterable[str]) -> set[str]:
    """Every vital module that importing ``modules`` executes, parent packages included."""
    todo, seen = list(modules), set()
    while todo:
        module = todo.pop()
        if module in seen or module_file(module) is None:
            continue
        seen.add(module)
        parts = module.split(".")
        todo.extend(".".join(parts[:i]) for i in range(1, len(parts)))
        todo.extend(imports_of(module))
    return seen


def _rel(path: Path) -> str:
    return path.relative_to(LIBRARY.parent).as_posix()


def compact(files: set[Path]) -> list[str]:
    """Files as DVC deps: a subpackage whose every module is in ``files`` is listed as its directory."""
    out: list[str] = []

    def whole(directory: Path) -> bool:
        return all(m in files for m in directory.rglob("*.py"))

    def visit(directory: Path) -> None:
        out.extend(_rel(m) for m in sorted(directory.glob("*.py")) if m in files)
        for sub in sorted(d for d in directory.iterdir() if (d / "__init__.py").is_file()):
            if whole(sub):
                out.append(_rel(sub))
            else:
                visit(sub)

    visit(LIBRARY)
    return sorted(out)


# ------------------------------------------------------------------ a stage's deps
@dataclass
class StageDeps:
    code: list[str]
    data: list[str]
    modules: set[str] = field(default_factory=set)

    @property
    def all(self) -> list[str]:
        return [*self.code, *self.data]


def _registry(ref: str) -> dict:
    module, _, attr = ref.partition(":")
    return getattr(importlib.import_module(module), attr)


def _param(params: Params, dotted: str) -> object:
    value: object = params
    for part in dotted.split("."):
        value = getattr(value, part)
    return value


def _call(ref: str, params: Params, root: Path) -> list[str]:
    module, _, attr = ref.partition(":")
    return list(getattr(importlib.import_module(module), attr)(params, root))


def stage_deps(stage: Stage, params: Params, root: Path = Path(".")) -> StageDeps:
    start = {RUNNER, stage.entry.partition(":")[0]}
    data = list(stage.reads)
    for param, registry in stage.backends:
        backend = _registry(registry)[_param(params, param)]
        start.update(backend.modules)
        data.extend(backend.reads)
    for ref in stage.param_reads:
        data.extend(_call(ref, params, root))
    modules = closure(start)
    code = [stage.script_path, *compact({module_file(m) for m in modules})]
    data = list(dict.fromkeys(data))
    data = [d for d in data if not covered(d, [o for o in data if o != d])]  # a file inside a listed folder
    return StageDeps(code, data, modules)


def stage_cmd(stage: Stage, params: Params, cmd: str) -> str:
    """``cmd`` with what runs the stage script set from ``stage.launcher``'s param (None: ``python``)."""
    script = stage.script_path
    if not stage.launcher or script not in cmd:
        return cmd
    launcher = _param(params, stage.launcher) or "python"
    return f"{launcher} {cmd[cmd.index(script) :]}"


def all_deps(params: Params, root: Path = Path(".")) -> dict[str, StageDeps]:
    return {name: stage_deps(stage, params, root) for name, stage in STAGES.items()}


# ------------------------------------------------------------------ dvc.yaml
def _yaml():
    from ruamel.yaml import YAML

    yaml = YAML()
    yaml.preserve_quotes = True
    yaml.width = 110
    yaml.indent(mapping=2, sequence=4, offset=2)
    return yaml


def _body(stages: dict, name: str) -> dict | None:
    """The stage body in dvc.yaml (``do:`` of a foreach stage)."""
    spec = stages.get(name)
    if spec is None:
        return None
    return spec.get("do", spec)


def _stages_of(dvc_yaml: Path) -> dict:
    import yaml

    doc = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8")) or {}
    return doc.get("stages") or {}


def declared(dvc_yaml: Path) -> dict[str, list[str]]:
    """deps of each stage in dvc.yaml, as written (templates unresolved)."""
    stages = _stages_of(dvc_yaml)
    return {name: [str(d) for d in (_body(stages, name) or {}).get("deps", [])] for name in stages}


def commands(dvc_yaml: Path) -> dict[str, str]:
    """cmd of each stage in dvc.yaml, as written."""
    import yaml

    doc = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8")) or {}
    stages = doc.get("stages", {})
    return {name: str((_body(stages, name) or {}).get("cmd", "")) for name in stages}


def covered(path: str, deps: Iterable[str]) -> bool:
    return any(path == d or path.startswith(d.rstrip("/") + "/") for d in deps)


def pipeline_name(dvc_yaml: Path, root: Path) -> str:
    """``dvc_yaml`` relative to the repository root, as the stage table names it (``Stage.pipeline``)."""
    try:
        return Path(dvc_yaml).resolve().relative_to(Path(root).resolve()).as_posix()
    except ValueError:
        return Path(dvc_yaml).name


def stage_spec(stage: Stage, params: Params, root: Path = Path(".")) -> dict:
    """The stage's whole entry in its dvc.yaml, generated from its row in the stage table."""
    body: dict = {}
    if stage.matrix:
        body["matrix"] = {k: v if isinstance(v, str) else list(v) for k, v in stage.matrix}
    depth = len(Path(stage.pipeline).parent.parts)
    if depth:
        body["wdir"] = "/".join([".."] * depth)  # paths and commands are relative to the repository root
    body["cmd"] = stage_cmd(stage, params, stage.cmd)
    body["deps"] = stage_deps(stage, params, root).all
    body["params"] = list(stage.param_keys)
    outs = [
        o if isinstance(o, str) else o.path if o.cache else {o.path: {"cache": False}} for o in stage.outs
    ]
    outs.append({stage.evidence_file: {"cache": False}})  # the run's evidence (vital/stats.py), git-tracked
    if outs:
        body["outs"] = outs
    if stage.metric_files:
        body["metrics"] = [{m: {"cache": False}} for m in stage.metric_files]
    plots = [
        {p.path: {"cache": False, "x": p.x, "y": p.y, **({"template": p.template} if p.template else {})}}
        for p in stage.plots
    ]
    if plots:
        body["plots"] = plots
    return {"foreach": stage.foreach, "do": body} if stage.foreach else body


def _render(name: str, spec: dict, comment: str) -> str:
    import yaml

    class Dumper(yaml.SafeDumper):  # lists indented under their key, as in the rest of dvc.yaml
        def increase_indent(self, flow=False, indentless=False):
            return super().increase_indent(flow, False)

    text = yaml.dump(spec, Dumper=Dumper, sort_keys=False, default_flow_style=False, width=110)
    lines = [f"  {name}:", *(f"    # {line}".rstrip() for line in comment.splitlines())]
    lines += [f"    {line}" for line in text.splitlines()]
    return "\n".join(lines) + "\n"


def _split(text: str) -> tuple[str, dict[str, str], str]:
    """dvc.yaml as (what precedes the stages, each stage's text block, what follows them)."""
    import re

    lines = text.splitlines(keepends=True)
    at = next((i for i, line in enumerate(lines) if line.rstrip() == "stages:"), None)
    if at is None:
        return text + ("" if text.endswith("\n") or not text else "\n") + "stages:\n", {}, ""
    end = next((i for i in range(at + 1, len(lines)) if re.match(r"\S", lines[i])), len(lines))
    blocks: dict[str, str] = {}
    name = None
    for line in lines[at + 1 : end]:
        key = re.match(r"  ([A-Za-z_][\w-]*):\s*(#.*)?$", line)
        if key:
            name = key.group(1)
            blocks[name] = ""
        if name is not None:
            blocks[name] += line
    return "".join(lines[: at + 1]), blocks, "".join(lines[end:])


def problems(
    dvc_yaml: Path, params: Params, root: Path = Path("."), only: Iterable[str] | None = None
) -> list[str]:
    """Every way dvc.yaml differs from what the stage table generates: deps a stage needs but does not
    declare, declared deps it does not use, any other key of its body (cmd, params, outs, metrics, plots,
    matrix), and stages the table does not have."""
    written = _stages_of(dvc_yaml)
    have = declared(dvc_yaml)
    table = in_pipeline(pipeline_name(dvc_yaml, root))
    out = []
    for name in only or table:
        if name not in have:
            out.append(f"stage {name!r} is not in {dvc_yaml}")
            continue
        need = stage_deps(STAGES[name], params, root).all
        missing = [d for d in need if "${" not in d and not covered(d, have[name])]
        extra = [d for d in have[name] if d not in need]
        cmd = commands(dvc_yaml).get(name, "")
        if STAGES[name].launcher and cmd != stage_cmd(STAGES[name], params, cmd):
            out.append(
                f"stage {name!r} runs {cmd!r}, but {STAGES[name].launcher} makes it "
                f"{stage_cmd(STAGES[name], params, cmd)!r}"
            )
        if missing:
            out.append(f"stage {name!r} runs or reads {', '.join(missing)}, which its deps do not list")
        if extra:
            out.append(f"stage {name!r} lists {', '.join(extra)} in its deps but does not use them")
        spec, now = stage_spec(STAGES[name], params, root), written[name] or {}
        if "foreach" in spec or "foreach" in now:
            if spec.get("foreach") != now.get("foreach"):
                out.append(
                    f"stage {name!r}: foreach is {now.get('foreach')!r}, the stage table says {spec.get('foreach')!r}"
                )
            spec, now = spec.get("do", spec), now.get("do", now)
        for key in dict.fromkeys([*spec, *now]):
            if key != "deps" and spec.get(key) != now.get(key):
                out.append(
                    f"stage {name!r}: {key} is {now.get(key)!r}, the stage table says {spec.get(key)!r}"
                )
        if not (Path(root) / STAGES[name].script_path).is_file():
            out.append(f"stage {name!r}: {STAGES[name].script_path} is missing")
    if only is None:
        for name in written:
            if name not in table:
                out.append(f"stage {name!r} is in {dvc_yaml} but not in the stage table (vital/pipeline.py)")
    return out


SCRIPT = '''"""Stage {name}: {doc} (vital/pipeline.py has the table, `vital run {name}` the same)."""

from vital.stage import main

if __name__ == "__main__":
    main("{name}")
'''


def write(dvc_yaml: Path, params: Params, root: Path = Path(".")) -> list[str]:
    """Regenerate every table stage's entry in dvc.yaml (the text before and after the stages, and stages the
    table does not have, are kept) and write a missing stage script; returns the changed stage names."""
    dvc_yaml = Path(dvc_yaml)
    head, blocks, tail = _split(dvc_yaml.read_text(encoding="utf-8") if dvc_yaml.is_file() else "")
    written = _stages_of(dvc_yaml) if dvc_yaml.is_file() else {}
    table = in_pipeline(pipeline_name(dvc_yaml, root))
    out, changed = [], []
    for name, stage in table.items():
        spec = stage_spec(stage, params, root)
        if written.get(name) != spec:
            changed.append(name)
        out.append(_render(name, spec, stage.comment))
        script = Path(root) / stage.script_path
        if not script.is_file():
            script.parent.mkdir(parents=True, exist_ok=True)
            script.write_text(SCRIPT.format(name=stage.name, doc=stage.doc or stage.name), encoding="utf-8")
    out += [block.rstrip("\n") + "\n" for name, block in blocks.items() if name not in table]
    body = "\n".join(out)
    dvc_yaml.parent.mkdir(parents=True, exist_ok=True)
    dvc_yaml.write_text(head + body + ("\n" + tail if tail else ""), encoding="utf-8")
    return changed


def missing_sections(params_file: Path, params: Params) -> list[str]:
    """Sections the table's stages name in ``params`` that ``params_file`` lacks (DVC needs them there)."""
    import yaml

    raw = yaml.safe_load(Path(params_file).read_text(encoding="utf-8")) if Path(params_file).is_file() else {}
    wanted = {key.split(".")[0] for stage in STAGES.values() for key in stage.param_keys}
    return sorted(s for s in wanted if s not in (raw or {}) and s in type(params).model_fields)


def write_sections(params_file: Path, params: Params) -> list[str]:
    """Append each missing section to ``params_file`` with the values in force (the code defaults)."""
    import yaml

    missing = missing_sections(params_file, params)
    if missing:
        text = Path(params_file).read_text(encoding="utf-8") if Path(params_file).is_file() else ""
        dump = {s: getattr(params, s).model_dump(mode="json") for s in missing}
        text += ("\n" if text and not text.endswith("\n") else "") + yaml.safe_dump(dump, sort_keys=False)
        Path(params_file).write_text(text, encoding="utf-8")
    return missing


# ------------------------------------------------------------------ docs
DOCS = "docs/architecture.md"
DOCS_BEGIN = "<!-- stage table: generated by `vital dag --write` from vital/pipeline.py; do not edit -->"
DOCS_END = "<!-- end of stage table -->"


def docs_table(params: Params, root: Path = Path(".")) -> str:
    """The docs' table of stages: what each does, reads (for these params) and writes."""

    def code(paths) -> str:
        return ", ".join(f"`{p}`" for p in paths) or "-"

    rows = [
        "| stage | what | reads | writes | params |",
        "|---|---|---|---|---|",
    ]
    for name, stage in STAGES.items():
        writes = [o if isinstance(o, str) else o.path for o in stage.outs]
        writes += [*stage.metric_files, stage.evidence_file, *(p.path for p in stage.plots)]
        where = "" if stage.pipeline == "dvc.yaml" else f" ({stage.pipeline})"
        reads = stage_deps(stage, params, root).data
        rows.append(
            f"| {name}{where} | {stage.doc} | {code(reads)} | {code(writes)} | {code(stage.param_keys)} |"
        )
    return "\n".join([DOCS_BEGIN, *rows, DOCS_END])


def _docs_parts(root: Path) -> tuple[str, str, str] | None:
    path = Path(root) / DOCS
    if not path.is_file():
        return None
    text = path.read_text(encoding="utf-8")
    if DOCS_BEGIN not in text or DOCS_END not in text:
        return None
    head, rest = text.split(DOCS_BEGIN, 1)
    table, tail = rest.split(DOCS_END, 1)
    return head, DOCS_BEGIN + table + DOCS_END, tail


def docs_problems(params: Params, root: Path = Path(".")) -> list[str]:
    parts = _docs_parts(root)
    if parts is None:
        return []
    return (
        []
        if parts[1] == docs_table(params, root)
        else [f"{DOCS}: the stage table differs from vital/pipeline.py"]
    )


def write_docs(params: Params, root: Path = Path(".")) -> bool:
    parts = _docs_parts(root)
    if parts is None:
        return False
    table = docs_table(params, root)
    (Path(root) / DOCS).write_text(parts[0] + table + parts[2], encoding="utf-8")
    return parts[1] != table


def placeholders(root: Path, real: tuple[str, ...] = ("stages/", "vital/", "params")) -> int:
    """Create a placeholder for every missing dep and out of the repo's stages (except paths under ``real``),
    so that `dvc commit -f` can lock the pipeline as if it had run: for tests and benches of the DAG itself."""
    from dvc.repo import Repo

    made = 0
    with Repo(str(root)) as repo:
        for stage in repo.index.stages:
            for entry in [*stage.deps, *stage.outs]:
                path = Path(root) / entry.def_path
                if entry.def_path.startswith(real) or path.exists():
                    continue
                target = path / "placeholder" if not path.suffix else path
                target.parent.mkdir(parents=True, exist_ok=True)
                target.write_text("placeholder\n")
                made += 1
    return made


def check_stage(name: str, params: Params, root: Path = Path(".")) -> None:
    """Refuse to run a stage whose dvc.yaml deps miss code or data it uses (run outside DVC: no check)."""
    dvc_yaml = root / STAGES[name].pipeline
    if not dvc_yaml.is_file() or name not in declared(dvc_yaml):
        return
    need = stage_deps(STAGES[name], params, root).all
    have = declared(dvc_yaml)[name]
    missing = [d for d in need if "${" not in d and not covered(d, have)]
    if missing:
        raise DagError(
            f"{STAGES[name].pipeline}: stage {name!r} runs or reads {', '.join(missing)}, which its deps do not list, so "
            "DVC would not rerun it when they change; run `vital dag --write` (after a params change of "
            "backend, sets or models, or a new import) and then `dvc repro`"
        )
