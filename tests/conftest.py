"""What the whole suite shares: the tiny pipeline built once per run, and the order test files start in.

`make test` runs two pytest-xdist workers with ``--dist loadfile --no-loadscope-reorder``: each file stays on
one worker and files are handed out in the order below.
"""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

import pytest
from filelock import FileLock

from tests.tiny_pipeline import DONE, FAILED, LOG, build_in_background

# Two workers and the background build share two cores: an OpenMP thread that spins while it waits takes CPU
# from the others. Waiting passively changes no result (the same bytes, measured on select) and every stage
# process the suite starts inherits it.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

# Files that take longest, longest first (from `--durations` of a whole run, 2026-12-05), so that the last
# files handed out are short ones and neither worker idles at the end. Files whose tests use the tiny pipeline
# go after all others: it is being built in the background meanwhile.
SLOW_FILES = (
    "test_corpus_fetch.py",
    "test_walkthrough.py",
    "test_paper_profile.py",
    "test_tune_distributed.py",
    "test_dag.py",
    "test_lineage_chain.py",
    "test_team.py",
    "test_llm_rate.py",
    "test_embed_parallel.py",
    "test_selector_backbone.py",
    "test_fetch_hostile.py",
    "test_docs_commands.py",
    "test_lineage_check.py",
    "test_annotate.py",
    "test_finetune.py",
    "test_pr_report.py",
    "test_llava_eos.py",
    "test_tune.py",
)
BUILD_TIMEOUT_S = 1800
_BUILD = pytest.StashKey["object"]()  # the build process, in the process that started it


def _uses_tiny_pipeline(item: pytest.Item) -> bool:
    return "tiny_pipeline" in getattr(item, "fixturenames", ())


def pytest_collection_modifyitems(session: pytest.Session, config: pytest.Config, items: list[pytest.Item]):
    rank = {name: i for i, name in enumerate(SLOW_FILES)}
    last = {item.path.name for item in items if _uses_tiny_pipeline(item)}

    def order(item: pytest.Item) -> tuple[int, int]:
        name = item.path.name
        return (2, 0) if name in last else (0, rank[name]) if name in rank else (1, 0)

    items.sort(key=order)  # stable: tests keep their order within a file


def _shared_dir(config: pytest.Config) -> Path:
    """One folder per test run: xdist workers' temp folders are children of the run's (named by the run's id, as a
    --basetemp is not emptied between runs at that level), a lone process has its own."""
    base = config._tmp_path_factory.getbasetemp()
    worker = getattr(config, "workerinput", None)
    shared = base.parent / f"tiny_pipeline-{worker['testrunuid']}" if worker else base / "tiny_pipeline"
    shared.mkdir(exist_ok=True)
    return shared


def _start_build(config: pytest.Config) -> Path:
    shared = _shared_dir(config)
    with FileLock(shared / "lock"):
        if not (shared / "started").exists():
            (shared / "started").touch()
            config.stash[_BUILD] = build_in_background(shared / "repo")
    return shared


def pytest_collection_finish(session: pytest.Session) -> None:
    if not session.config.option.collectonly and any(_uses_tiny_pipeline(item) for item in session.items):
        _start_build(session.config)


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    build = session.config.stash.get(_BUILD, None)
    if build is not None:
        cut_short = session.shouldstop or session.shouldfail or exitstatus == pytest.ExitCode.INTERRUPTED
        if cut_short and build.poll() is None:
            os.killpg(build.pid, signal.SIGTERM)  # the run was cut short: nobody will use it
        build.wait()  # another worker may still be waiting for it


@pytest.fixture(scope="session")
def tiny_pipeline(request: pytest.FixtureRequest) -> Path:
    """The built tiny pipeline repo, shared by every worker: copy it (``tests.tiny_pipeline.copy_of``) to change it."""
    shared = _start_build(request.config)
    build = request.config.stash.get(_BUILD, None)
    deadline = time.monotonic() + BUILD_TIMEOUT_S
    while not (shared / DONE).exists():
        crashed = build is not None and build.poll() not in (None, 0)
        if (shared / FAILED).exists() or crashed or time.monotonic() > deadline:
            log = (shared / LOG).read_text()[-6000:]
            pytest.fail(f"building the tiny pipeline in {shared} failed:\n{log}", pytrace=False)
        time.sleep(1)
    return shared / "repo"
