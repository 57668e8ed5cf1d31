"""`make install` installs the versions in constraints.txt: the stored models and dvc.lock are bytes of them."""

from __future__ import annotations

import re
import tomllib
from importlib import metadata
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _pins() -> dict[str, str]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text().splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, sep, version = line.partition("==")
            assert sep, f"constraints.txt: {line!r} is not name==version"
            pins[_canonical(name)] = version
    return pins


def _requirement_names(extras: tuple[str, ...] = ("dev",)) -> set[str]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    reqs = list(project["dependencies"])
    for extra in extras:
        reqs += project["optional-dependencies"][extra]
    return {_canonical(re.split(r"[<>=!~;\[ ]", r, maxsplit=1)[0]) for r in reqs}


def test_make_install_uses_the_constraints():
    makefile = (ROOT / "Makefile").read_text()
    assert "-c constraints.txt" in makefile
    assert re.search(r"^\$\(VENV\)/\.installed:.*constraints\.txt", makefile, re.M)  # an edit reinstalls


def test_every_declared_dependency_is_pinned():
    # a dependency added to pyproject.toml without refreshing constraints.txt would install unpinned
    missing = sorted(_requirement_names() - set(_pins()))
    assert missing == [], (
        f"not in constraints.txt (pip freeze --exclude-editable > constraints.txt): {missing}"
    )


def test_the_environment_under_test_is_the_pinned_one():
    pins = _pins()
    moved = sorted(
        f"{name} {metadata.version(name)} (constraints.txt: {pins[name]})"
        for name in _requirement_names()
        if name in pins and metadata.version(name) != pins[name]
    )
    assert moved == [], f"installed versions differ from constraints.txt (run make install): {moved}"
