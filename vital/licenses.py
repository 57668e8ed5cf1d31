"""Where each figure comes from and under which license: ``pmid``, ``pmcid`` and ``license`` on every record.

PMC Open Access articles come under different licenses (CC0, CC BY, CC BY-NC, ...). A record's own
``pmid``/``pmcid``/``license`` fields win; missing ones are looked up in PMC's OA file list
(``oa_file_list.csv``: ``File,Article Citation,Accession ID,Last Updated (YYYY-MM-DD HH:MM:SS),PMID,License``)
by PMCID, else by PMID; a license found nowhere is ``"unknown"``.

The list (about 6M articles) is held as three sorted integer arrays and a small table of license names,
about 20 bytes per article, not as a dict of strings.
"""

from __future__ import annotations

import csv
import re
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vital.io import RecordError

UNKNOWN = "unknown"
PROVENANCE_FIELDS = ("pmid", "pmcid", "license")
_PMCID = re.compile(r"PMC(\d+)")
# fields of a corpus record that may name its article (LLaVA-Med's image-URL join adds the last two)
_PMCID_SOURCES = ("pmcid", "pmc_tar_url", "image_file_path", "pair_id")


def _digits(value: Any) -> int | None:
    s = str(value).strip() if value is not None else ""
    return int(s) if s.isdigit() else None


def pmcid_of(raw: dict[str, Any]) -> str | None:
    """``PMC<digits>`` from the record's ``pmcid``, else from its OA package URL, file path or pair_id."""
    for field in _PMCID_SOURCES:
        value = raw.get(field)
        if value is None or isinstance(value, bool):
            continue
        text = str(value).strip()
        if field == "pmcid" and text.isdigit():  # "13900" as well as "PMC13900"
            return f"PMC{int(text)}"
        m = _PMCID.search(text)
        if m:
            return f"PMC{int(m[1])}"
    return None


@dataclass(frozen=True)
class OaFileList:
    """PMC's OA file list as sorted arrays: PMCID -> (PMID, license) and PMID -> license."""

    pmcids: np.ndarray  # sorted PMCID numbers
    pmid_by_pmcid: np.ndarray  # aligned with pmcids; 0 = none
    license_by_pmcid: np.ndarray  # aligned with pmcids; index into names
    pmids: np.ndarray  # sorted PMID numbers
    license_by_pmid: np.ndarray
    names: tuple[str, ...]

    def __len__(self) -> int:
        return len(self.pmcids)

    @staticmethod
    def _find(keys: np.ndarray, key: int | None) -> int | None:
        if key is None or not len(keys):
            return None
        i = int(np.searchsorted(keys, key))
        return i if i < len(keys) and keys[i] == key else None

    def by_pmcid(self, pmcid: str | None) -> tuple[str | None, str] | None:
        """(PMID or None, license) of an article, or None when the list lacks it."""
        i = self._find(self.pmcids, _digits(pmcid.removeprefix("PMC")) if pmcid else None)
        if i is None:
            return None
        pmid = int(self.pmid_by_pmcid[i])
        return (str(pmid) if pmid else None), self.names[self.license_by_pmcid[i]]

    def by_pmid(self, pmid: str | None) -> str | None:
        i = self._find(self.pmids, _digits(pmid))
        return None if i is None else self.names[self.license_by_pmid[i]]


def read_oa_file_list(path: str | Path) -> OaFileList:
    """Read ``oa_file_list.csv`` (PMC's layout; columns found by header name). A file without the
    ``Accession ID`` and ``License`` columns is a :class:`RecordError` naming it."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path}: PMC OA file list not found (sample.corpus.oa_file_list)")
    names: dict[str, int] = {}
    pmcids, pmids, codes = [], [], []
    with path.open(newline="", encoding="utf-8") as f:
        rows = csv.reader(f)
        header = next(rows, [])
        col = {name.strip(): i for i, name in enumerate(header)}
        if "Accession ID" not in col or "License" not in col:
            raise RecordError(
                f"{path}:1: not PMC's OA file list (sample.corpus.oa_file_list): header {header[:6]} lacks "
                "'Accession ID' and 'License'"
            )
        acc, lic, pmid_col = col["Accession ID"], col["License"], col.get("PMID")
        for row in rows:
            if len(row) <= max(acc, lic):
                continue
            number = _digits(row[acc].strip().removeprefix("PMC"))
            if number is None:
                continue
            license_name = row[lic].strip() or UNKNOWN
            pmcids.append(number)
            pmids.append((_digits(row[pmid_col]) or 0) if pmid_col is not None and pmid_col < len(row) else 0)
            codes.append(names.setdefault(license_name, len(names)))
    pmcid_arr = np.asarray(pmcids, dtype=np.int64)
    pmid_arr = np.asarray(pmids, dtype=np.int64)
    code_arr = np.asarray(codes, dtype=np.int32)
    order = np.argsort(pmcid_arr, kind="stable")
    with_pmid = np.flatnonzero(pmid_arr)
    by_pmid = with_pmid[np.argsort(pmid_arr[with_pmid], kind="stable")]
    return OaFileList(
        pmcids=pmcid_arr[order],
        pmid_by_pmcid=pmid_arr[order],
        license_by_pmcid=code_arr[order],
        pmids=pmid_arr[by_pmid],
        license_by_pmid=code_arr[by_pmid],
        names=tuple(names),
    )


def provenance(raw: dict[str, Any], oa: OaFileList | None = None) -> dict[str, str | None]:
    """``{"pmid", "pmcid", "license"}`` of a corpus record: its own fields first, then the OA file list."""
    pmid = str(raw["pmid"]).strip() if raw.get("pmid") not in (None, "") else None
    pmcid = pmcid_of(raw)
    own = raw.get("license")
    license_name = own.strip() if isinstance(own, str) and own.strip() else None
    if oa is not None and (license_name is None or pmid is None):
        found = oa.by_pmcid(pmcid)
        if found is not None:
            pmid = pmid or found[0]
            license_name = license_name or found[1]
        elif license_name is None:
            license_name = oa.by_pmid(pmid)
    return {"pmid": pmid, "pmcid": pmcid, "license": license_name or UNKNOWN}


def license_counts(records: Iterable[dict[str, Any]]) -> dict[str, int]:
    """Records per license (``unknown`` for a record without one), sorted by name."""
    counts = Counter(
        r.get("license") if isinstance(r.get("license"), str) and r.get("license") else UNKNOWN
        for r in records
    )
    return dict(sorted(counts.items()))
