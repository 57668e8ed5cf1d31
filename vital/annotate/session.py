"""One clinician's annotation session: the figures to rank, and the label file their rankings go to.

Every accepted ranking is appended to ``data/labels/<annotator>.jsonl`` (flushed and fsynced before the
answer goes back), the file the labels stage reads with ``labels.backend: files``. A new session on the
same file skips the figures already ranked there, so a closed browser or a killed server loses nothing
that was submitted.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from pydantic import BaseModel, ValidationError

from vital.io import read_jsonl
from vital.labels import validate_preference
from vital.paths import Paths
from vital.schema import Candidate, FigureRecord
from vital.seeding import rng_for

ANNOTATOR = re.compile(r"^[A-Za-z0-9_.-]{1,64}$")


class AnnotationError(ValueError):
    """Input the session cannot use; the message names the file, figure or candidate.

    ``status`` is the HTTP status the server answers with.
    """

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Task:
    """One figure and its candidate conversations, in the order this annotator sees them."""

    pair_id: str
    caption: str
    image: str
    candidates: tuple[Candidate, ...]

    def as_json(self) -> dict:
        return {
            "pair_id": self.pair_id,
            "caption": self.caption,
            "image": self.image
            if self.image.startswith(("http://", "https://"))
            else f"/image/{self.pair_id}",
            "candidates": [
                {
                    "id": c.id,
                    "turns": [
                        {"from": t.from_, "value": t.value.replace("<image>", "").strip()}
                        for t in c.conversations
                    ],
                }
                for c in self.candidates
            ],
        }


def _validated(path: Path, model: type[BaseModel], what: str) -> Iterator:
    for i, raw in enumerate(read_jsonl(path), 1):
        try:
            yield model.model_validate(raw)
        except ValidationError as e:
            raise AnnotationError(f"{path}:{i}: invalid {what} ({e.errors()[0]['msg']})") from None


def load_tasks(paths: Paths, annotator: str, seed: int = 0, limit: int | None = None) -> list[Task]:
    """A task per sampled figure with two or more candidates, candidates shuffled per annotator.

    The shuffle is seeded by (seed, annotator, figure) so a restart shows the same order, and different
    clinicians see different orders (no position bias shared across them).
    """
    if limit is not None and limit < 1:
        raise AnnotationError(f"limit={limit}: offer at least one figure")
    for path, stage in ((paths.sample, "sample"), (paths.candidates, "generate")):
        if not path.is_file():
            raise AnnotationError(f"{path}: not found (run the {stage} stage first: dvc repro {stage})")
    by_figure: dict[str, list[Candidate]] = defaultdict(list)
    for c in _validated(paths.candidates, Candidate, "candidate"):
        by_figure[c.pair_id].append(c)
    tasks = []
    for fig in _validated(paths.sample, FigureRecord, "figure record"):
        cands = by_figure.get(fig.pair_id, [])
        if len(cands) < 2:
            continue
        order = rng_for("annotate", seed, annotator, fig.pair_id).permutation(len(cands))
        tasks.append(Task(fig.pair_id, fig.fig_caption, fig.image, tuple(cands[int(k)] for k in order)))
        if limit is not None and len(tasks) >= limit:
            break
    if not tasks:
        raise AnnotationError(
            f"{paths.sample}: no sampled figure has two or more candidates in {paths.candidates}"
        )
    return tasks


class AnnotationSession:
    """Serves the next unranked figure and records rankings, safely from several request threads."""

    def __init__(self, paths: Paths, annotator: str, tasks: list[Task]):
        if not ANNOTATOR.match(annotator):
            raise AnnotationError(
                f"annotator {annotator!r}: use 1-64 letters, digits, '_', '.' or '-' (it names the label file)"
            )
        self.paths = paths
        self.annotator = annotator
        self.tasks = {t.pair_id: t for t in tasks}
        self.order = [t.pair_id for t in tasks]
        self.known = {c.id: t.pair_id for t in tasks for c in t.candidates}
        self.digests = {c.id: c.digest() for t in tasks for c in t.candidates}
        self.label_file = paths.labels_dir / f"{annotator}.jsonl"
        self.done: set[str] = set()
        if self.label_file.is_file():
            with self.label_file.open(encoding="utf-8") as f:
                self.done = self._ranked_in(f.read())
        self.skipped: set[str] = set()
        self._lock = threading.Lock()

    def _ranked_in(self, text: str) -> set[str]:
        done: set[str] = set()
        for line in text.splitlines():
            try:
                raw = json.loads(line)
            except json.JSONDecodeError:
                continue  # the labels stage reports it; never rewrite a clinician's file
            if not isinstance(raw, dict) or raw.get("annotator") != self.annotator:
                continue
            seen = raw.get("seen")
            if isinstance(seen, dict) and any(self.digests.get(c, d) != d for c, d in seen.items()):
                continue  # ranked before its candidates were regenerated: offer the figure again
            done.add(str(raw.get("pair_id")))
        return done

    def progress(self) -> dict:
        ranked = sum(1 for pid in self.order if pid in self.done)
        return {"ranked": ranked, "total": len(self.order), "skipped": len(self.skipped)}

    def next_task(self) -> Task | None:
        with self._lock:
            for pid in self.order:
                if pid not in self.done and pid not in self.skipped:
                    return self.tasks[pid]
            return None

    def skip(self, pair_id: str) -> None:
        """Leave a figure for later (this session only: a restart offers it again)."""
        with self._lock:
            self._task(pair_id)
            self.skipped.add(pair_id)

    def revisit_skipped(self) -> None:
        with self._lock:
            self.skipped.clear()

    def submit(self, payload: object) -> dict:
        """Validate one ranking, append it to the label file, return the progress.

        Raises :class:`AnnotationError` naming the figure or candidate when the ranking cannot be used.
        """
        if not isinstance(payload, dict):
            raise AnnotationError("expected a JSON object with pair_id, ranking and ties")
        pair_id = str(payload.get("pair_id"))
        with self._lock:
            task = self._task(pair_id)
            if pair_id in self.done:
                raise self._already(pair_id)
            record = {
                "pair_id": pair_id,
                "annotator": self.annotator,
                "ranking": payload.get("ranking"),
                "ties": payload.get("ties") or [],
                "source": "files",
                "seen": {c.id: self.digests[c.id] for c in task.candidates},
            }
            pref, reason, detail = validate_preference(record, self.known, self.digests)
            if pref is None:
                raise AnnotationError(f"figure {pair_id}: {reason}: {detail}")
            missing = sorted({c.id for c in task.candidates} - set(pref.ranking))
            if missing:
                raise AnnotationError(f"figure {pair_id}: rank every candidate; missing {missing}")
            for group in pref.ties:
                places = sorted(pref.ranking.index(c) for c in group)
                if len(group) < 2 or places != list(range(places[0], places[0] + len(group))):
                    raise AnnotationError(
                        f"figure {pair_id}: tied candidates {group} must be neighbours in the ranking"
                    )
            self._append(pair_id, pref.model_dump_json())
            self.done.add(pair_id)
            self.skipped.discard(pair_id)
            return self.progress()

    def _task(self, pair_id: str) -> Task:
        try:
            return self.tasks[pair_id]
        except KeyError:
            raise AnnotationError(f"figure {pair_id}: not in this session's tasks", status=404) from None

    def _already(self, pair_id: str) -> AnnotationError:
        return AnnotationError(
            f"figure {pair_id}: already ranked by {self.annotator} in {self.label_file}", 409
        )

    def _append(self, pair_id: str, line: str) -> None:
        """Append under an exclusive file lock, after re-reading the file: another ``vital annotate``
        for the same annotator may have written since this one started."""
        self.label_file.parent.mkdir(parents=True, exist_ok=True)
        with self.label_file.open("a+", encoding="utf-8") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.seek(0)
                existing = f.read()
                ranked = self._ranked_in(existing)
                if pair_id in ranked:
                    self.done |= ranked
                    raise self._already(pair_id)
                if existing and not existing.endswith("\n"):
                    f.write("\n")  # a hand-edited file without a final newline must not swallow this line
                f.write(line + "\n")
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def image_path(self, pair_id: str) -> Path:
        task = self._task(pair_id)
        path = (self.paths.corpus / task.image).resolve()
        if not path.is_relative_to(self.paths.corpus.resolve()):
            raise AnnotationError(f"figure {pair_id}: image path {task.image!r} leaves the corpus folder")
        return path
