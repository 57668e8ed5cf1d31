"""Evaluation sets read as their users download them, into :class:`VQAItem` lists.

``LOADERS`` maps a format name (``evaluate.sets[].format``) to a reader. Each reader turns raw
records into items one at a time; a record that cannot be read is skipped and listed with its file
and position, a file that is missing or not the expected shape raises an error naming it, and so
does a file where more than ``max_invalid_fraction`` of the records are invalid (usually the wrong
``format`` for the file). Default image folders follow each release's own layout; ``images``
overrides them.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vital.images import check_image
from vital.io import RecordError, read_jsonl, read_text
from vital.paths import repo_relative
from vital.schema import DOMAINS
from vital.vqa.items import AnswerType, LoadedSet, VQAItem
from vital.vqa.metrics import normalize_answer, yes_no_reference


class VQAFormatError(RecordError):
    """An evaluation file is missing, unreadable, or not in the format its params say."""


class _BadRecord(ValueError):
    """One record cannot be read; the loader lists it and goes on."""


class _Filtered(Exception):
    """A valid record left out on purpose (other split, other language); the reason is counted."""

    def __init__(self, reason: str):
        self.reason = reason


@dataclass(frozen=True)
class SetOptions:
    split: str = "test"
    limit: int | None = None
    max_invalid_fraction: float = 0.05


@dataclass(frozen=True)
class Format:
    """How to read one distributed format."""

    records: Callable[[Path], Iterator[tuple[str, Any]]]
    """(record label, raw record) pairs; raises VQAFormatError on a file-level problem."""
    item: Callable[[Any, Path, SetOptions], VQAItem]
    """Raw record -> item (images resolved against the folder); raises _BadRecord or _Filtered."""
    default_images: Callable[[Path], Path]
    """Image folder when ``images`` is not given, from the question file's path."""


LOADERS: dict[str, Format] = {}


def register(name: str, fmt: Format) -> None:
    if name in LOADERS:
        raise ValueError(f"VQA format {name!r} is already registered")
    LOADERS[name] = fmt


# ------------------------------------------------------------------ file readers
def _json_list(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = json.loads(read_text(path))
    except json.JSONDecodeError as e:
        raise VQAFormatError(f"{path}: not valid JSON ({e.msg} at line {e.lineno})") from None
    if not isinstance(data, list):
        raise VQAFormatError(f"{path}: expected a JSON list of questions, got {type(data).__name__}")
    for i, rec in enumerate(data):
        yield f"{path}#{i}", rec


def _jsonl(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        for i, rec in enumerate(read_jsonl(path), 1):
            yield f"{path}#{i}", rec
    except RecordError as e:
        raise VQAFormatError(str(e)) from None


class _PlainUnpickler(pickle.Unpickler):
    """Unpickles lists, dicts, strings and numbers only: a question file must not run code."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} (only plain data is allowed)")


def _pickle_list(path: Path) -> Iterator[tuple[str, Any]]:
    try:
        data = _PlainUnpickler(io.BytesIO(path.read_bytes())).load()
    except (pickle.UnpicklingError, EOFError, ValueError) as e:
        raise VQAFormatError(f"{path}: not a plain-data pickle ({e})") from None
    if not isinstance(data, list):
        raise VQAFormatError(f"{path}: expected a pickled list of questions, got {type(data).__name__}")
    for i, rec in enumerate(data):
        yield f"{path}#{i}", rec


# ------------------------------------------------------------------ field helpers
def _field(rec: Any, *names: str) -> Any:
    if not isinstance(rec, dict):
        raise _BadRecord(f"expected an object, got {type(rec).__name__}")
    for name in names:
        value = rec.get(name)
        if value is not None and str(value).strip() != "":
            return value
    raise _BadRecord(f"missing field {' or '.join(repr(n) for n in names)}")


def _text(rec: Any, *names: str) -> str:
    return str(_field(rec, *names)).strip()


def _answer(rec: Any, *names: str) -> str:
    """A reference answer: text, or a list of acceptable answers (joined with ", "); never the list's repr."""
    value = _field(rec, *names)
    if isinstance(value, list):
        parts = [str(v).strip() for v in value if v is not None and not isinstance(v, dict | list)]
        parts = [p for p in parts if p]
        if not parts or len(parts) != len(value):
            raise _BadRecord(f"answer {value!r} is not a list of texts")
        return ", ".join(parts)
    if isinstance(value, dict):
        raise _BadRecord("answer is an object, not a text")
    return str(value).strip()


def _answer_type(value: Any) -> AnswerType:
    kind = str(value).strip().upper()
    if kind not in ("CLOSED", "OPEN"):
        raise _BadRecord(f"answer_type {value!r} is neither CLOSED nor OPEN")
    return kind  # type: ignore[return-value]


def _closed_if_yes_no(answer: str) -> AnswerType:
    # "yes", "No.", and also "Yes, it is" / "no, there is not": the answer's first word decides
    return "CLOSED" if yes_no_reference(answer) is not None else "OPEN"


def _image(folder: Path, name: str) -> Path:
    path = folder / name
    problem = check_image(path)
    if problem is not None:
        raise _BadRecord(problem)
    return path


def _lower(value: Any) -> str | None:
    return None if value is None or str(value).strip() == "" else str(value).strip().lower()


# ------------------------------------------------------------------ formats
def _demo_item(rec: Any, images: Path, opts: SetOptions) -> VQAItem:
    return VQAItem(
        question_id=_text(rec, "question_id"),
        image_path=_image(images, _text(rec, "image")),
        question=_text(rec, "question"),
        answer=_answer(rec, "answer"),
        answer_type=_answer_type(_field(rec, "answer_type")),
        domain=_lower(rec.get("domain")),
        # the demo world records what each question probes (presence, side, count, size, modality)
        question_type=_lower(rec.get("kind") or rec.get("question_type")),
    )


register("demo", Format(_jsonl, _demo_item, lambda p: p.parent))

_VQA_RAD_SPLITS = {"test": ("test_freeform", "test_para"), "train": ("freeform", "para")}


def _vqa_rad_item(rec: Any, images: Path, opts: SetOptions) -> VQAItem:
    # The OSF release marks the test questions by phrase_type test_freeform / test_para.
    phrase = _text(rec, "phrase_type").lower()
    if opts.split != "all" and phrase not in _VQA_RAD_SPLITS[opts.split]:
        raise _Filtered(f"not_{opts.split}_split")
    return VQAItem(
        question_id=_text(rec, "qid"),
        image_path=_image(images, _text(rec, "image_name")),
        question=_text(rec, "question"),
        answer=_answer(rec, "answer"),
        answer_type=_answer_type(_field(rec, "answer_type")),
        organ=_lower(rec.get("image_organ")),
        question_type=_lower(rec.get("question_type")),
    )


register("vqa_rad", Format(_json_list, _vqa_rad_item, lambda p: p.parent / "VQA_RAD Image Folder"))


def _slake_item(rec: Any, images: Path, opts: SetOptions) -> VQAItem:
    lang = _lower(rec.get("q_lang")) if isinstance(rec, dict) else None
    if lang is not None and lang != "en":
        raise _Filtered("not_english")
    return VQAItem(
        question_id=_text(rec, "qid"),
        image_path=_image(images, _text(rec, "img_name")),
        question=_text(rec, "question"),
        answer=_answer(rec, "answer"),
        answer_type=_answer_type(_field(rec, "answer_type")),
        domain=_lower(rec.get("modality")),
        organ=_lower(rec.get("location")),
        question_type=_lower(rec.get("content_type")),
    )


register("slake", Format(_json_list, _slake_item, lambda p: p.parent / "imgs"))


def _turns(rec: Any) -> list:
    # Some LLaVA-Med test files spell the key "conversatons"; their own scripts accept both.
    turns = _field(rec, "conversations", "conversatons")
    if not isinstance(turns, list) or len(turns) < 2 or not all(isinstance(t, dict) for t in turns):
        raise _BadRecord("conversations must be a list of at least two turns")
    return turns


def _turn_value(turns: list, speaker: str) -> str:
    for t in turns:
        if t.get("from") == speaker and str(t.get("value", "")).strip():
            return str(t["value"])
    raise _BadRecord(f"no {speaker!r} turn with text")


def _llava_med_vqa_item(rec: Any, images: Path, opts: SetOptions) -> VQAItem:
    turns = _turns(rec)
    answer = _turn_value(turns, "gpt").strip()
    kind = rec.get("answer_type")
    return VQAItem(
        question_id=_text(rec, "id", "question_id"),
        image_path=_image(images, _text(rec, "image")),
        question=_turn_value(turns, "human").replace("<image>", "").strip(),
        answer=answer,
        answer_type=_answer_type(kind) if kind is not None else _closed_if_yes_no(answer),
    )


register("llava_med_vqa", Format(_json_list, _llava_med_vqa_item, lambda p: p.parent / "images"))


def _pathvqa_records(path: Path) -> Iterator[tuple[str, Any]]:
    # The original release pickles its questions (qas/<split>/<split>_qa.pkl); LLaVA-Med and
    # BioMed-VITAL convert them to a test.json in LLaVA conversation form.
    return _pickle_list(path) if path.suffix == ".pkl" else _json_list(path)


def _pathvqa_item(rec: Any, images: Path, opts: SetOptions) -> VQAItem:
    if isinstance(rec, dict) and ("conversations" in rec or "conversatons" in rec):
        item = _llava_med_vqa_item(rec, images, opts)
    else:
        image = _text(rec, "image")
        answer = _answer(rec, "answer")
        item = VQAItem(
            question_id=str(rec.get("qid") or rec.get("question_id") or f"{image}:{_text(rec, 'question')}"),
            image_path=_image(images, image if Path(image).suffix else f"{image}.jpg"),
            question=_text(rec, "question"),
            answer=answer,
            answer_type=_closed_if_yes_no(answer),
        )
    return replace(item, domain="histology")


def _pathvqa_images(path: Path) -> Path:
    # pvqa/qas/test/test_qa.pkl -> pvqa/images/test/ ; a converted test.json -> <its folder>/images
    if path.suffix == ".pkl" and len(path.parents) >= 3:
        return path.parents[2] / "images" / path.parent.name
    return path.parent / "images"


register("pathvqa", Format(_pathvqa_records, _pathvqa_item, _pathvqa_images))


def _qa50_domain(value: Any) -> str | None:
    # LLaVA-Med writes the domain as flags ({"ct_scan": true, ...}); a plain string is accepted too.
    if isinstance(value, dict):
        return next((d for d in DOMAINS if value.get(d)), next((k for k, v in value.items() if v), None))
    return _lower(value)


def _llava_med_qa_item(rec: Any, images: Path, opts: SetOptions) -> VQAItem:
    return VQAItem(
        question_id=_text(rec, "question_id"),
        image_path=_image(images, _text(rec, "image")),
        # LLaVA-Med's qa50 file keeps the <image> placeholder in the question text; the prompt adds
        # the image itself, so a kept placeholder would be a second image token (transformers fails)
        question=_text(rec, "text").replace("<image>", "").strip(),
        answer=_answer(rec, "gpt4_answer", "answer"),
        answer_type="OPEN",
        domain=_qa50_domain(rec.get("domain")),
        question_type=_lower(rec.get("type")),
        extra={k: rec[k] for k in ("fig_caption", "fig_label", "in_text_mention") if k in rec},
    )


register("llava_med_qa", Format(_jsonl, _llava_med_qa_item, lambda p: p.parent / "images"))


# ------------------------------------------------------------------ entry point
def set_files(spec: Any, root: Path) -> list[str]:
    """The question file and image folder one set spec (``EvalSet``) reads, relative to ``root``."""
    path = Path(spec.path)
    fmt = LOADERS.get(spec.format)
    images = spec.images if spec.images is not None else (fmt.default_images(path) if fmt else None)
    return [repo_relative(path, root)] + ([repo_relative(images, root)] if images is not None else [])


def load_set(
    name: str,
    format: str,
    path: str | Path,
    images: str | Path | None = None,
    options: SetOptions | None = None,
) -> LoadedSet:
    """Read one evaluation set; invalid records are skipped and listed, file-level problems raise."""
    opts = options or SetOptions()
    fmt = LOADERS.get(format)
    if fmt is None:
        raise VQAFormatError(f"set {name!r}: unknown format {format!r} (known: {', '.join(sorted(LOADERS))})")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"set {name!r}: question file not found: {path}")
    folder = Path(images) if images is not None else fmt.default_images(path)
    if not folder.is_dir():
        raise FileNotFoundError(f"set {name!r}: image folder not found: {folder} (set `images` for this set)")

    out = LoadedSet(name=name, format=format, path=path, items=[], images=folder)
    seen: set[str] = set()
    n_read = 0
    for label, rec in fmt.records(path):
        try:
            item = fmt.item(rec, folder, opts)
        except _Filtered as f:
            out.filtered[f.reason] = out.filtered.get(f.reason, 0) + 1
            continue
        except _BadRecord as e:
            n_read += 1
            out.skipped.append(f"{label}: {e}")
            continue
        n_read += 1
        if not normalize_answer(item.answer):
            out.skipped.append(
                f"{label}: reference answer {item.answer!r} normalises to nothing (no word to score against)"
            )
            continue
        if item.question_id in seen:
            out.skipped.append(f"{label}: duplicate question id {item.question_id!r}")
            continue
        seen.add(item.question_id)
        out.items.append(item)
        if opts.limit is not None and len(out.items) >= opts.limit:
            break
    _check_invalid_share(out, n_read, opts.max_invalid_fraction)
    return out


def _check_invalid_share(loaded: LoadedSet, n_read: int, max_fraction: float) -> None:
    if not loaded.items:
        detail = f"; first problem: {loaded.skipped[0]}" if loaded.skipped else ""
        if loaded.filtered:
            left_out = ", ".join(f"{n} {reason}" for reason, n in sorted(loaded.filtered.items()))
            detail += f"; left out on purpose: {left_out} (check the set's `split`, or use split: all)"
        raise VQAFormatError(
            f"set {loaded.name!r}: no usable questions in {loaded.path} (format {loaded.format!r}): "
            f"{n_read} records read, {len(loaded.skipped)} invalid, "
            f"{sum(loaded.filtered.values())} left out{detail}"
        )
    if n_read and len(loaded.skipped) / n_read > max_fraction:
        shown = "\n  ".join(loaded.skipped[:5])
        raise VQAFormatError(
            f"set {loaded.name!r}: {len(loaded.skipped)} of {n_read} records in {loaded.path} are invalid "
            f"(more than max_invalid_fraction={max_fraction}; is format {loaded.format!r} right?)\n  {shown}"
        )


def read_sets(specs: Iterable[Any], root: Path, max_invalid_fraction: float) -> list[LoadedSet]:
    """Sets as params describe them (``evaluate.sets``, ``finetune.sets``: name, format, path, images,
    split, limit), paths relative to ``root`` unless absolute."""
    out = []
    for s in specs:
        opts = SetOptions(split=s.split, limit=s.limit, max_invalid_fraction=max_invalid_fraction)
        images = Path(root) / s.images if s.images is not None else None
        out.append(load_set(s.name, s.format, Path(root) / s.path, images, opts))
    return out
