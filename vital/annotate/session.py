"""One clinician's annotation session: the figures to rank, and the label file their rankings go to.

Every accepted ranking is appended to ``data/labels/<annotator>.jsonl`` (flushed and fsynced before the
answer goes back), the file the labels stage reads with ``labels.backend: files``. A new session on the
same file skips the figures already ranked there, so a closed browser or a killed server loses nothing
that was submitted. A correction is appended too: the latest record for a figure supersedes the earlier
ones (here and in the labels stage); nothing in the file is ever rewritten.
"""

from __future__ import annotations

import fcntl
import json
import os
import re
import threading
from collections import defaultdict
from dataclasses import dataclass

from vital.annotate.order import ORDERS, OrderError, figure_order, read_scores
from vital.artifacts.candidates import read_candidates
from vital.artifacts.sample import read_sample
from vital.drops import Drops
from vital.io import RecordError, strip_bom
from vital.labels import validate_preference
from vital.paths import Paths
from vital.schema import Candidate, FigureRecord
from vital.seeding import rng_for, stable_seed
from vital.shards import index_refs, read_bytes, split_ref

# matched in full (``re.fullmatch``): no newline slips past a ``$``, and no ".", ".." or "-x" file names
ANNOTATOR = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,63}")


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


def _read_inputs(paths: Paths) -> tuple[dict[str, FigureRecord], list[Candidate]]:
    """The sample and its candidates by the rules of :mod:`vital.artifacts`. The session writes no metrics
    where a dropped line could be listed, so any drop is refused here, naming the first."""
    drops = Drops()
    try:
        sample = read_sample(paths.sample, drops)
        candidates = read_candidates(paths.candidates, drops, sample)
    except (FileNotFoundError, RecordError) as e:
        raise AnnotationError(str(e)) from None
    if drops:
        first = drops.examples[0]
        raise AnnotationError(
            f"{first['where']}: {first['reason']} ({first['detail']}); {drops.total} such line(s): fix or "
            "rerun the stage that wrote it"
        )
    return sample, candidates


def load_tasks(
    paths: Paths,
    annotator: str,
    seed: int = 0,
    limit: int | None = None,
    overlap: int = 0,
    order: str = "sample",
) -> list[Task]:
    """A task per sampled figure with two or more candidates, candidates shuffled per annotator.

    The shuffle is seeded by (seed, annotator, figure) so a restart shows the same order, and different
    clinicians see different orders (no position bias shared across them).

    Figures come in sample order, the same for every annotator, unless ``overlap`` is set: then the
    first ``overlap`` figures are a fixed set in a fixed order (seeded by ``seed`` alone), shared by
    every annotator so that inter-annotator agreement can be measured on them, and the rest follow in
    an order of each annotator's own, so that clinicians spread over different figures. ``limit`` then
    cuts that sequence.

    ``order`` ``uncertain`` or ``disagree`` (see :mod:`vital.annotate.order`) puts the figures where the
    selector is least certain, or where judge and selector disagree most, first; with ``overlap`` the
    shared set still comes first (the same set as with ``sample``) and the rest follow in that order.
    """
    if limit is not None and limit < 1:
        raise AnnotationError(f"limit={limit}: offer at least one figure")
    if overlap < 0:
        raise AnnotationError(f"overlap={overlap}: expected 0 (no shared set) or more figures")
    if order not in ORDERS:
        raise AnnotationError(f"order={order!r}: expected one of {', '.join(ORDERS)}")
    sample, candidates = _read_inputs(paths)
    by_figure: dict[str, list[Candidate]] = defaultdict(list)
    for c in candidates:
        by_figure[c.pair_id].append(c)
    tasks = []
    # the fetch stage's index when the profile fetched the figures (the demo's is empty: local images)
    index = paths.fetched / "index.parquet"
    fetched = index_refs(index, paths.corpus) if index.is_file() else {}
    for fig in sample.values():
        cands = by_figure.get(fig.pair_id, [])
        if len(cands) < 2:
            continue
        shuffle = rng_for("annotate", seed, annotator, fig.pair_id).permutation(len(cands))
        image = fetched.get(fig.pair_id, fig.image)
        tasks.append(Task(fig.pair_id, fig.fig_caption, image, tuple(cands[int(k)] for k in shuffle)))
    if not tasks:
        raise AnnotationError(
            f"{paths.sample}: no sampled figure has two or more candidates in {paths.candidates}"
        )
    if overlap:
        if overlap > len(tasks):
            raise AnnotationError(
                f"overlap={overlap}: only {len(tasks)} sampled figures have two or more candidates"
            )
        shared = sorted(tasks, key=lambda t: stable_seed(seed, "annotate-overlap", t.pair_id))[:overlap]
        ids = {t.pair_id for t in shared}
        rest = [t for t in tasks if t.pair_id not in ids]
        if order == "sample":
            rest.sort(key=lambda t: stable_seed(seed, "annotate-order", annotator, t.pair_id))
        tasks = shared + _in_order(rest, order, paths)
    else:
        tasks = _in_order(tasks, order, paths)
    return tasks[:limit] if limit is not None else tasks


def _in_order(tasks: list[Task], order: str, paths: Paths) -> list[Task]:
    by_id = {t.pair_id: t for t in tasks}
    try:
        ids = figure_order(
            order,
            list(by_id),
            {pid: [c.id for c in t.candidates] for pid, t in by_id.items()},
            lambda: read_scores(paths.scores, "score", "select"),
            lambda: read_scores(paths.judgments, "score", "judge"),
        )
    except OrderError as e:
        raise AnnotationError(f"--order {order}: {e}") from None
    return [by_id[pid] for pid in ids]


class AnnotationSession:
    """Serves the next unranked figure and records rankings, safely from several request threads.

    ``unreadable`` lists the label file's lines that could not be read (``file:line: why``): a line cut
    short by a crash, a byte that is not UTF-8. They are left as they are (the labels stage reports them
    too); the readable lines count.
    """

    def __init__(self, paths: Paths, annotator: str, tasks: list[Task]):
        if not isinstance(annotator, str) or not ANNOTATOR.fullmatch(annotator):
            raise AnnotationError(
                f"annotator {annotator!r}: use 1-64 letters, digits, '_', '.' or '-', starting with a "
                "letter, digit or '_' (it names the label file)"
            )
        self.paths = paths
        self.annotator = annotator
        self.tasks = {t.pair_id: t for t in tasks}
        self.order = [t.pair_id for t in tasks]
        self.known = {c.id: t.pair_id for t in tasks for c in t.candidates}
        self.digests = {c.id: c.digest() for t in tasks for c in t.candidates}
        self.label_file = paths.labels_dir / f"{annotator}.jsonl"
        self.saved: dict[str, dict] = {}  # figure -> the latest usable record of this annotator
        self.unreadable: list[str] = []
        self._file_state: tuple[int, int] | None = None  # (size, mtime) of the label file last read
        self.skipped: set[str] = set()
        self._lock = threading.Lock()
        self._refresh()

    @property
    def done(self) -> set[str]:
        return set(self.saved)

    def _read(self, data: bytes) -> tuple[dict[str, dict], list[str]]:
        """(figure -> latest record of this annotator, unreadable lines as ``file:line: why``)."""
        saved: dict[str, dict] = {}
        unreadable: list[str] = []
        lines = data.split(b"\n")
        for lineno, raw_line in enumerate(lines, 1):
            if not raw_line.strip():
                continue
            where = f"{self.label_file}:{lineno}"
            try:
                text = strip_bom(raw_line.decode("utf-8"))
            except UnicodeDecodeError as e:
                unreadable.append(
                    f"{where}: not UTF-8 (byte 0x{raw_line[e.start]:02x} at column {e.start + 1})"
                )
                continue
            try:
                raw = json.loads(text)
            except json.JSONDecodeError as e:
                cut = (
                    " (the last line, without an end of line: half-written?)" if lineno == len(lines) else ""
                )
                unreadable.append(f"{where}: not JSON ({e.msg}){cut}")
                continue
            if not isinstance(raw, dict):
                unreadable.append(f"{where}: not a JSON object")
                continue
            if raw.get("annotator") != self.annotator:
                continue
            pair_id = str(raw.get("pair_id"))
            seen = raw.get("seen")
            if isinstance(seen, dict) and any(self.digests.get(c, d) != d for c, d in seen.items()):
                saved.pop(pair_id, None)  # ranked before its candidates were regenerated: offer it again
                continue
            saved[pair_id] = raw  # a later record supersedes an earlier one
        return saved, unreadable

    def _refresh(self) -> None:
        """Re-read the label file when it changed since the last read: another ``vital annotate`` for the
        same annotator (another machine, a second tab's server) may have appended rankings to it."""
        try:
            st = os.stat(self.label_file)
        except FileNotFoundError:
            return
        state = (st.st_size, st.st_mtime_ns)
        if state != self._file_state:
            self.saved, self.unreadable = self._read(self.label_file.read_bytes())
            self._file_state = state

    def progress(self) -> dict:
        with self._lock:
            return self._progress()

    def _progress(self) -> dict:
        self._refresh()
        ranked = sum(1 for pid in self.order if pid in self.saved)
        return {"ranked": ranked, "total": len(self.order), "skipped": len(self.skipped)}

    def next_task(self) -> Task | None:
        with self._lock:
            self._refresh()
            for pid in self.order:
                if pid not in self.saved and pid not in self.skipped:
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

        A figure already ranked is refused (409: another tab or session ranked it) unless the payload
        says ``"correction": true``; the correction is appended and supersedes the earlier ranking.

        Raises :class:`AnnotationError` naming the figure or candidate when the ranking cannot be used.
        """
        if not isinstance(payload, dict):
            raise AnnotationError("expected a JSON object with pair_id, ranking and ties")
        pair_id = str(payload.get("pair_id"))
        correction = payload.get("correction", False)
        if not isinstance(correction, bool):
            raise AnnotationError(f"figure {pair_id}: correction must be true or false")
        with self._lock:
            self._refresh()
            task = self._task(pair_id)
            if pair_id in self.saved and not correction:
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
            self._append(pair_id, pref.model_dump_json(), correction)
            self.saved[pair_id] = pref.model_dump()
            self.skipped.discard(pair_id)
            return self._progress()

    def _task(self, pair_id: str) -> Task:
        try:
            return self.tasks[pair_id]
        except KeyError:
            raise AnnotationError(f"figure {pair_id}: not in this session's tasks", status=404) from None

    def _already(self, pair_id: str) -> AnnotationError:
        return AnnotationError(
            f"figure {pair_id}: already ranked by {self.annotator} in {self.label_file} "
            "(in another tab or session); reopen it from the saved rankings to correct it",
            409,
        )

    def _append(self, pair_id: str, line: str, correction: bool = False) -> None:
        """Append under an exclusive file lock, after re-reading the file: another ``vital annotate``
        for the same annotator may have written since this one started."""
        self.label_file.parent.mkdir(parents=True, exist_ok=True)
        with self.label_file.open("a+b") as f:
            fcntl.flock(f, fcntl.LOCK_EX)
            try:
                f.seek(0)
                existing = f.read()
                saved, _ = self._read(existing)
                if pair_id in saved and not correction:
                    self.saved.update(saved)
                    raise self._already(pair_id)
                if existing and not existing.endswith(b"\n"):
                    f.write(b"\n")  # a cut-off or hand-edited last line must not swallow this one
                f.write(line.encode("utf-8") + b"\n")
                f.flush()
                os.fsync(f.fileno())
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    def saved_rankings(self) -> list[dict]:
        """The figures of this session already ranked, in task order, with their latest ranking."""
        with self._lock:
            self._refresh()
            return [
                {
                    "pair_id": pid,
                    "caption": self.tasks[pid].caption,
                    "ranking": self.saved[pid].get("ranking"),
                    "ties": self.saved[pid].get("ties") or [],
                }
                for pid in self.order
                if pid in self.saved
            ]

    def task(self, pair_id: str) -> Task:
        with self._lock:
            return self._task(pair_id)

    def image(self, pair_id: str) -> tuple[bytes, str]:
        """The figure's bytes and file name: a file under the corpus folder, or a member of a fetched
        shard (``shards/shard-00000.tar#<key>.jpg``, see :mod:`vital.shards`)."""
        task = self._task(pair_id)
        file, member = split_ref(task.image)
        path = (self.paths.corpus / file).resolve()
        fetched = self.paths.fetched.resolve()  # the fetch stage's shards
        if not (path.is_relative_to(self.paths.corpus.resolve()) or path.is_relative_to(fetched)):
            raise AnnotationError(f"figure {pair_id}: image path {task.image!r} leaves the corpus folder")
        return read_bytes(task.image, self.paths.corpus), member or path.name
