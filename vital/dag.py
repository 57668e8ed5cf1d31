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
        start.add(backend.module)
        data.extend(backend.reads)
    for ref in stage.param_reads:
        data.extend(_call(ref, params, root))
    modules = closure(start)
    code = [f"stages/{stage.script}.py", *compact({module_file(m) for m in modules})]
    data = list(dict.fromkeys(data))
    data = [d for d in data if not covered(d, [o for o in data if o != d])]  # a file inside a listed folder
    return StageDeps(code, data, modules)


def stage_cmd(stage: Stage, params: Params, cmd: str) -> str:
    """``cmd`` with what runs the stage script set from ``stage.launcher``'s param (None: ``python``)."""
    script = f"stages/{stage.script}.py"
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


def declared(dvc_yaml: Path) -> dict[str, list[str]]:
    """deps of each stage in dvc.yaml, as written (templates unresolved)."""
    import yaml

    doc = yaml.safe_load(Path(dvc_yaml).read_text(encoding="utf-8")) or {}
    stages = doc.get("stages", {})
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


def problems(
    dvc_yaml: Path, params: Params, root: Path = Path("."), only: Iterable[str] | None = None
) -> list[str]:
    """What dvc.yaml gets wrong: deps a stage needs but does not declare, and declared deps it does not use."""
    have = declared(dvc_yaml)
    out = []
    for name in only or in_pipeline(pipeline_name(dvc_yaml, root)):
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
    return out


def write(dvc_yaml: Path, params: Params, root: Path = Path(".")) -> list[str]:
    """Rewrite every table stage's deps in dvc.yaml (everything else is kept); returns changed stage names."""
    yaml = _yaml()
    doc = yaml.load(Path(dvc_yaml).read_text(encoding="utf-8"))
    changed = []
    for name, stage in in_pipeline(pipeline_name(dvc_yaml, root)).items():
        body = _body(doc["stages"], name)
        if body is None:
            raise DagError(f"{dvc_yaml}: no stage {name!r} (the stage table in vital/pipeline.py names it)")
        deps = stage_deps(stage, params, root).all
        cmd = stage_cmd(stage, params, str(body.get("cmd", "")))
        if [str(d) for d in body.get("deps", [])] != deps or str(body.get("cmd", "")) != cmd:
            changed.append(name)
        body["deps"] = deps
        if stage.launcher:
            body["cmd"] = cmd
    with Path(dvc_yaml).open("w", encoding="utf-8") as f:
        yaml.dump(doc, f)
    return changed


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
