"""docs/architecture.md against the code, without importing the library (fast): every module, function and
file it cites exists, its stage table lists exactly the stages of vital/pipeline.py, and it cites nothing
outside the repository. (The table's content is `vital dag --check`'s: tests/test_dag.py.)"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

from vital.dag import DOCS, DOCS_BEGIN, DOCS_END
from vital.pipeline import STAGES

ROOT = Path(__file__).resolve().parents[1]
TEXT = (ROOT / DOCS).read_text(encoding="utf-8")
# inline code spans (they may wrap a line), outside the fenced layout block
CODE_SPANS = [
    " ".join(span.split()) for span in re.findall(r"`([^`]+)`", re.sub(r"```.*?```", "", TEXT, flags=re.S))
]
# folders whose files are in git (data/, models/, artifacts/ and metrics/ are DVC's, absent in a fresh clone)
TRACKED = ("vital/", "stages/", "tests/", "bench/", "docs/", ".github/", "configs/")
PATTERN = re.compile(r"[<>{}*$\[]")  # `stages/<name>.py`, `metrics/tune/<subset>-s<seed>.json`: not one file


def module_file(dotted: str) -> Path | None:
    """vital.x.y -> vital/x/y.py or vital/x/y/__init__.py, if either exists."""
    base = ROOT.joinpath(*dotted.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


@cache
def top_level_names(path: Path) -> frozenset[str]:
    """Names a module defines or imports at its top level (functions, classes, assignments, imports)."""
    names: set[str] = set()
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            names.add(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names |= {t.id for t in targets if isinstance(t, ast.Name)}
        elif isinstance(node, ast.Import | ast.ImportFrom):
            names |= {(a.asname or a.name).split(".")[0] for a in node.names}
    return frozenset(names)


def defined_in(path: Path, name: str) -> bool:
    """``name`` at the top level of the module at ``path`` or, for a package, of any of its modules."""
    files = sorted(path.parent.glob("*.py")) if path.name == "__init__.py" else [path]
    return any(name in top_level_names(f) for f in files)


def test_every_cited_repository_file_exists():
    cited = {span.split("#")[0].rstrip("/") for span in CODE_SPANS if span.startswith(TRACKED)}
    cited |= set(re.findall(r"(?<![\w/.`])((?:vital|stages|tests|bench)/[\w/]+\.py)\b", TEXT))
    missing = sorted(p for p in cited if not PATTERN.search(p) and " " not in p and not (ROOT / p).exists())
    assert not missing, f"{DOCS} cites files that do not exist: {missing}"


def test_every_cited_module_and_function_exists():
    problems = []
    for span in CODE_SPANS:
        for ref in re.findall(r"\b(vital(?:\.\w+)+)(?::(\w+))?", span):
            dotted, attr = ref
            parts = dotted.split(".")
            # the longest prefix that is a module; the rest (at most one name) is defined in it
            for cut in range(len(parts), 1, -1):
                path = module_file(".".join(parts[:cut]))
                if path is not None:
                    break
            else:
                problems.append(f"`{span}`: no module {dotted}")
                continue
            rest = parts[cut:] + ([attr] if attr else [])
            if len(rest) > 1 or (rest and not defined_in(path, rest[0])):
                problems.append(f"`{span}`: {'.'.join(parts[:cut])} defines no {'.'.join(rest)}")
    assert not problems, "\n".join(problems)


def test_names_in_a_module_row_are_defined_by_that_module():
    """In the module tables (| `vital/x.py` | what |), every cited call `f(...)` and every cited CamelCase or
    UPPER_CASE name is defined (or imported) by that module."""
    problems = []
    for line in TEXT.splitlines():
        row = re.match(r"\| `(vital/[\w/]+?)(?:\.py)?/?` \| (.*) \|$", line)
        if not row:
            continue
        target = ROOT / row.group(1)
        path = target.with_suffix(".py") if target.with_suffix(".py").is_file() else target / "__init__.py"
        if not path.is_file():
            continue  # test_every_cited_repository_file_exists names it
        for span in re.findall(r"`([^`]+)`", row.group(2)):
            call = re.match(r"(\w+)\(", span)
            if call:
                name = call.group(1)
            elif re.fullmatch(r"[A-Z]\w*", span):
                name = span
            else:
                continue  # a param, a key, a file: checked elsewhere or not code
            if not defined_in(path, name):
                problems.append(f"{row.group(1)}: `{span}` is not defined there")
    assert not problems, "\n".join(problems)


def test_stage_table_lists_exactly_the_pipeline_stages():
    table = TEXT.split(DOCS_BEGIN, 1)[1].split(DOCS_END, 1)[0]
    rows = [line.split("|")[1].strip() for line in table.strip().splitlines()[2:]]
    named = [re.sub(r" \(.*\)$", "", row) for row in rows]
    assert named == list(STAGES), f"{DOCS}: stage table {named} != vital/pipeline.py {list(STAGES)}"


def test_nothing_outside_the_repository_is_cited():
    outside = [
        span
        for span in CODE_SPANS
        if span.startswith(("/", "~", "../")) or "/../" in span or re.match(r"[A-Za-z]:\\", span)
    ]
    outside += re.findall(r"(?:/work|/home|/tmp|/Users)/\S+", TEXT)
    assert not outside, f"{DOCS} cites paths outside the repository: {outside}"
