"""Batch mode: the OpenAI Batch API feeding the same response cache as online requests.

Requests missing from the cache are written as Batch API JSONL (``custom_id`` = cache key), split
within the per-file limits, uploaded, and submitted. A manifest of input files, batch ids and
states is rewritten atomically after every change, so a killed stage resumes polling the batches
it already paid for instead of submitting them again. Results are merged by ``custom_id`` (their
order is not guaranteed); only failed or expired lines are resubmitted, for a bounded number of
rounds.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass
from pathlib import Path

import openai

from vital.io import read_json, write_json
from vital.llm.accounting import Usage
from vital.llm.cache import RequestCache
from vital.llm.client import endpoint, redact, refusal_message
from vital.llm.engine import FatalAPIError, Outcome, Request, _decode
from vital.params import ClientParams
from vital.progress import progress

TERMINAL = ("completed", "failed", "expired", "cancelled")


@dataclass
class BatchLimits:
    max_lines: int = 50_000
    max_bytes: int = 190 * 1024 * 1024
    poll_s: float = 30.0
    rounds: int = 3
    completion_window: str = "24h"
    url: str = "/v1/chat/completions"


def split_lines(lines: list[str], max_lines: int, max_bytes: int) -> list[list[str]]:
    """Chunks of at most ``max_lines`` lines and ``max_bytes`` bytes (newlines included)."""
    chunks: list[list[str]] = []
    cur: list[str] = []
    size = 0
    for line in lines:
        n = len(line.encode()) + 1
        if n > max_bytes:
            raise ValueError(f"one batch request is {n} bytes, over the {max_bytes}-byte file limit")
        if cur and (len(cur) >= max_lines or size + n > max_bytes):
            chunks.append(cur)
            cur, size = [], 0
        cur.append(line)
        size += n
    if cur:
        chunks.append(cur)
    return chunks


class BatchRunner:
    def __init__(
        self,
        client: openai.AsyncOpenAI,
        cache: RequestCache,
        manifest_path: Path,
        limits: BatchLimits | None = None,
        usage: Usage | None = None,
        section: str = "generate",
        client_params: ClientParams | None = None,
    ) -> None:
        self.section, self.client_params = section, client_params
        self.client = client
        self.cache = cache
        self.manifest_path = Path(manifest_path)
        self.limits = limits or BatchLimits()
        self.usage = usage or Usage()
        self.manifest = self._load()

    # ------------------------------------------------------------------ manifest
    def _load(self) -> dict:
        if self.manifest_path.exists():
            return read_json(self.manifest_path)
        return {"batches": [], "failed": {}}

    def _save(self) -> None:
        write_json(self.manifest_path, self.manifest)

    # ------------------------------------------------------------------ run
    def run(self, requests: list[Request]) -> list[Outcome]:
        return asyncio.run(self.arun(requests))

    async def arun(self, requests: list[Request]) -> list[Outcome]:
        by_key = {r.key: r for r in requests}
        for b in self.manifest["batches"]:
            if not b["id"] and not b["merged"]:
                # uploaded, then killed before the batch was created: nothing was paid; resubmit
                b["status"], b["merged"] = "abandoned", True
        self.usage.cache_hits += sum(1 for k in by_key if k in self.cache)
        await self._finish_open_batches()  # resume what a killed run paid for
        for _ in range(self.limits.rounds):
            missing = [r for k, r in by_key.items() if k not in self.cache and not self._in_open_batch(k)]
            if not missing:
                break
            await self._submit(missing)
            await self._finish_open_batches()
        outcomes = []
        for r in requests:
            hit = self.cache.get(r.key)
            if hit is not None:
                outcomes.append(Outcome(r, hit))
            else:
                reason = self.manifest["failed"].get(r.key, "batch_not_answered")
                outcomes.append(Outcome(r, None, error=reason))
        for k in by_key:
            if k not in self.cache:
                self.usage.failures[self.manifest["failed"].get(k, "batch_not_answered")] += 1
        return outcomes

    def _in_open_batch(self, key: str) -> bool:
        return any(b["id"] and not b["merged"] and key in b["custom_ids"] for b in self.manifest["batches"])

    async def _submit(self, requests: list[Request]) -> None:
        lines = [
            json.dumps(
                {"custom_id": r.key, "method": "POST", "url": self.limits.url, "body": r.body},
                ensure_ascii=False,
            )
            for r in requests
        ]
        for chunk in split_lines(lines, self.limits.max_lines, self.limits.max_bytes):
            ids = [json.loads(line)["custom_id"] for line in chunk]
            data = ("\n".join(chunk) + "\n").encode()
            step = f"{endpoint(self.client_params) if self.client_params else ''}/files"
            try:
                f = await self.client.files.create(
                    file=("vital-batch.jsonl", data, "application/jsonl"), purpose="batch"
                )
                entry = {
                    "id": None,
                    "input_file_id": f.id,
                    "status": "uploaded",
                    "custom_ids": ids,
                    "merged": False,
                    "created": time.time(),
                }
                self.manifest["batches"].append(entry)
                self._save()
                step = step.removesuffix("/files") + "/batches"
                batch = await self.client.batches.create(
                    input_file_id=f.id,
                    endpoint=self.limits.url,
                    completion_window=self.limits.completion_window,
                )
            except openai.APIStatusError as e:
                raise FatalAPIError(self._refused(e, step, str(requests[0].body.get("model")))) from None
            except openai.APIConnectionError as e:
                raise FatalAPIError(
                    f"{self.section}: the Batch API at {step} cannot be reached ({e.__class__.__name__}); "
                    f"check {self.section}.client.base_url or set {self.section}.mode: online"
                ) from None
            entry["id"], entry["status"] = batch.id, batch.status
            self._save()
            self.usage.requests_sent += len(ids)

    def _refused(self, e: openai.APIStatusError, step: str, model: str) -> str:
        status = e.status_code
        detail = redact(f"{e.__class__.__name__}: {e}", self.client_params)[:200]
        if status in (404, 405, 501):
            return (
                f"{self.section}: the server has no Batch API ({step} answered HTTP {status}); "
                f"set {self.section}.mode: online"
            )
        if status in (401, 403):
            return refusal_message(self.section, status, detail, model, self.client_params)
        return (
            f"{self.section}: the Batch API refused the upload ({step}: HTTP {status}: {detail}); "
            f"retry later or set {self.section}.mode: online"
        )

    async def _finish_open_batches(self) -> None:
        open_ = [b for b in self.manifest["batches"] if b["id"] and not b["merged"]]
        bar = progress(total=sum(len(b["custom_ids"]) for b in open_), desc="batch lines", unit="req")
        try:
            while open_:
                for b in list(open_):
                    batch = await self.client.batches.retrieve(b["id"])
                    b["status"] = batch.status
                    if batch.status in TERMINAL:
                        await self._merge(b, batch)
                        b["merged"] = True
                        open_.remove(b)
                        bar.update(len(b["custom_ids"]))
                    self._save()
                if open_:
                    await asyncio.sleep(self.limits.poll_s)
        finally:
            bar.close()

    async def _merge(self, entry: dict, batch) -> None:
        wanted = set(entry["custom_ids"])
        answered: set[str] = set()
        if batch.output_file_id:
            text = (await self.client.files.content(batch.output_file_id)).text
            for line in text.splitlines():
                if not line.strip():
                    continue
                rec = json.loads(line)
                cid = rec.get("custom_id")
                if cid not in wanted:
                    continue
                resp = rec.get("response") or {}
                body, _ = (
                    _decode(json.dumps(resp.get("body"))) if resp.get("status_code") == 200 else (None, "")
                )
                if body is None:
                    self.manifest["failed"][cid] = f"batch_http_{resp.get('status_code')}"
                    continue
                self.cache.put(cid, body, model=str(body.get("model", "")))
                self.usage.responses += 1
                self.usage.add_tokens(body)
                self.manifest["failed"].pop(cid, None)
                answered.add(cid)
        if batch.error_file_id:
            text = (await self.client.files.content(batch.error_file_id)).text
            for line in text.splitlines():
                if line.strip():
                    rec = json.loads(line)
                    if rec.get("custom_id") in wanted and rec["custom_id"] not in answered:
                        code = (rec.get("error") or {}).get("code") or "error"
                        self.manifest["failed"][rec["custom_id"]] = f"batch_{code}"
        for cid in wanted - answered:
            self.manifest["failed"].setdefault(cid, f"batch_{batch.status}")
