"""vital.dvc_repo: the one reader of dvc.lock and DVC's status, and DVC's own md5 of a file or folder."""

from __future__ import annotations

import yaml

from vital import dvc_repo


def test_md5_of_a_file_and_a_folder_equals_the_one_dvc_add_writes(tmp_path, monkeypatch):
    from dvc.repo import Repo

    monkeypatch.chdir(tmp_path)
    Repo.init(str(tmp_path), no_scm=True).close()
    (tmp_path / "notes.txt").write_bytes(b"a line\r\nanother\n")  # CRLF: DVC 3 hashes bytes, no dos2unix
    folder = tmp_path / "images"
    (folder / "sub").mkdir(parents=True)
    (folder / "b.png").write_bytes(bytes(range(256)) * 3)
    (folder / "a b.txt").write_text("spaces in the name\n")
    (folder / "sub" / "c.txt").write_text("nested\n")
    (folder / "sub.txt").write_text("sorts between 'sub/' entries and 'b.png' by relpath\n")
    with Repo(str(tmp_path)) as repo:
        repo.add(["notes.txt", "images"])

    def dvc_md5(name: str) -> str:
        return yaml.safe_load((tmp_path / f"{name}.dvc").read_text())["outs"][0]["md5"]

    assert dvc_repo.file_md5(tmp_path / "notes.txt") == dvc_md5("notes.txt")
    assert dvc_repo.dir_md5(folder) == dvc_md5("images")
    assert dvc_repo.md5(folder) == dvc_md5("images") and dvc_repo.md5(tmp_path / "absent") is None
    lock = dvc_repo.Lock.read(tmp_path)
    assert lock.raw == {
        "notes.txt": (dvc_md5("notes.txt"), "notes.txt.dvc"),
        "images": (dvc_md5("images"), "images.dvc"),
    }
    assert lock.is_raw("images/sub/c.txt") and not lock.is_raw("images2")
    # the folder's manifest in the cache gives a file's md5 without reading the file
    assert dvc_repo.cached_file_md5(tmp_path, dvc_md5("images"), "sub/c.txt") == dvc_repo.file_md5(
        folder / "sub" / "c.txt"
    )


def test_lock_reads_both_pipelines_and_tells_which_version_a_stage_consumed(tmp_path):
    def entry(deps, outs):
        return {
            "cmd": "x",
            "deps": [{"path": p, "md5": m} for p, m in deps.items()],
            "outs": [{"path": p, "md5": m} for p, m in outs.items()],
        }

    lock = {"schema": "2.0", "stages": {"curate": entry({"a.jsonl": "1"}, {"curated": "2.dir"})}}
    (tmp_path / "dvc.lock").write_text(yaml.safe_dump(lock))
    (tmp_path / "bakeoff").mkdir()
    bakeoff = {"stages": {"bakeoff_tune@judge-0": entry({"curated": "old.dir"}, {"models/b": "3.dir"})}}
    (tmp_path / "bakeoff" / "dvc.lock").write_text(yaml.safe_dump(bakeoff))
    read = dvc_repo.Lock.read(tmp_path)
    assert read.producer("curated") == "curate" and read.producer("a.jsonl") is None
    assert read.stages["bakeoff_tune@judge-0"].lock_file == "bakeoff/dvc.lock"
    assert read.consumed_older("bakeoff_tune@judge-0", "curated") is True
    assert read.consumed_older("curate", "a.jsonl") is None  # no stage produces it: the lock cannot tell
