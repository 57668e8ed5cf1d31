"""Content-addressed response cache: no paid request is ever made twice.

The key is the sha256 of the canonical JSON of the full request body (model, messages with the
image bytes inlined as data URLs, sampling params). Entries live in one SQLite database in WAL
mode; every insert is its own committed transaction, so ``kill -9`` loses at most the requests
that were in flight. The cache is append-only: an existing key is never overwritten.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from pathlib import Path

from vital.params import ParamsError

_SCHEMA = """
CREATE TABLE IF NOT EXISTS responses (
    key TEXT PRIMARY KEY,
    model TEXT NOT NULL,
    response TEXT NOT NULL,
    created REAL NOT NULL
)
"""


def canonical(body: dict) -> str:
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def request_key(body: dict) -> str:
    """Content address of a request body. The API key and endpoint are never part of it."""
    return hashlib.sha256(canonical(body).encode()).hexdigest()


class CacheError(ParamsError):
    """The cache folder cannot be made or opened: a settings problem, ended in one line naming the param."""


class RequestCache:
    """SQLite (WAL) store of completed responses keyed by :func:`request_key`."""

    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            self.path = self.directory / "responses.sqlite"
            self._db = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            # NORMAL in WAL mode survives a killed process; only an OS crash can lose the last commits.
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(_SCHEMA)
        except (OSError, sqlite3.Error) as e:
            raise CacheError(
                f"request cache at {self.directory} cannot be opened ({e}); set client.cache_dir"
            ) from None

    def get(self, key: str) -> dict | None:
        row = self._db.execute("SELECT response FROM responses WHERE key = ?", (key,)).fetchone()
        return json.loads(row[0]) if row else None

    def __contains__(self, key: str) -> bool:
        return self._db.execute("SELECT 1 FROM responses WHERE key = ?", (key,)).fetchone() is not None

    def put(self, key: str, response: dict, model: str = "") -> bool:
        """Store a response; returns False when the key was already present (first write wins)."""
        cur = self._db.execute(
            "INSERT OR IGNORE INTO responses (key, model, response, created) VALUES (?, ?, ?, ?)",
            (key, model, json.dumps(response, ensure_ascii=False), time.time()),
        )
        return cur.rowcount == 1

    def keys(self) -> set[str]:
        return {r[0] for r in self._db.execute("SELECT key FROM responses")}

    def __len__(self) -> int:
        return self._db.execute("SELECT COUNT(*) FROM responses").fetchone()[0]

    def close(self) -> None:
        self._db.close()
