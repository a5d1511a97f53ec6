"""The storage contract, on the data dir and on an S3-compatible bucket alike."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from app.config import Settings
from app.storage import LocalStorage, Storage
from tests.artifacts import write_files

TREE = {
    "adapter_config.json": b'{"r": 16}',
    "adapter_model.safetensors": os.urandom(3000),
    "nested/deeper/notes.txt": b"three levels down",
}


def put(storage: Storage, key: str, content: bytes) -> None:
    temp = storage.temp_path(key)
    temp.write_bytes(content)
    storage.commit(temp, key)


def read(storage: Storage, key: str) -> bytes:
    with storage.open(key) as stream:
        return stream.read()


def tree(directory: Path) -> dict[str, bytes]:
    return {
        p.relative_to(directory).as_posix(): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file()
    }


def test_a_committed_object_reads_back_and_its_temp_file_is_gone(storage: Storage):
    temp = storage.temp_path("files/org-1/file-1")
    temp.write_bytes(b"hello world")

    storage.commit(temp, "files/org-1/file-1")

    assert not temp.exists()
    assert read(storage, "files/org-1/file-1") == b"hello world"
    assert storage.size("files/org-1/file-1") == 11
    assert storage.exists("files/org-1/file-1")
    found = storage.stat("files/org-1/file-1")
    assert found is not None and (found.key, found.size) == ("files/org-1/file-1", 11)
    assert found.etag and found.modified > 0


def test_put_file_copies_and_keeps_the_source(storage: Storage, tmp_path: Path):
    source = tmp_path / "results.csv"
    source.write_bytes(b"step,loss\n1,2.0\n")

    storage.put_file(source, "files/org-1/file-2")

    assert source.read_bytes() == b"step,loss\n1,2.0\n"
    assert read(storage, "files/org-1/file-2") == b"step,loss\n1,2.0\n"


def test_rewriting_a_key_replaces_the_object(storage: Storage):
    put(storage, "jobs/j/results.csv", b"old")
    put(storage, "jobs/j/results.csv", b"new and longer")
    assert read(storage, "jobs/j/results.csv") == b"new and longer"


def test_iter_bytes_streams_the_requested_range(storage: Storage):
    content = os.urandom(5000)
    put(storage, "exports/e/model.bin", content)

    def joined(start: int = 0, end: int | None = None) -> bytes:
        return b"".join(storage.iter_bytes("exports/e/model.bin", start, end))

    assert joined() == content
    assert joined(100, 200) == content[100:200]
    assert joined(4990) == content[4990:]
    assert joined(10, 10) == b""


def test_a_missing_object_is_file_not_found_everywhere(storage: Storage):
    key = "files/org-1/nothing"
    assert storage.stat(key) is None
    assert not storage.exists(key)
    with pytest.raises(FileNotFoundError):
        read(storage, key)
    with pytest.raises(FileNotFoundError):
        b"".join(storage.iter_bytes(key))
    with pytest.raises(FileNotFoundError):
        storage.size(key)
    with pytest.raises(FileNotFoundError):
        storage.fetch(key)
    storage.delete(key)  # deleting what is gone is not an error


def test_delete_removes_the_object(storage: Storage):
    put(storage, "files/org-1/file-3", b"bytes")
    storage.delete("files/org-1/file-3")
    assert not storage.exists("files/org-1/file-3")


@pytest.mark.parametrize(
    "key", ["", "/etc/passwd", "../outside", "files/../../x", "files//x", "files/a b", ".hidden"]
)
def test_keys_that_could_escape_are_refused(storage: Storage, key: str, tmp_path: Path):
    (tmp_path / "f").write_bytes(b"x")
    with pytest.raises(ValueError, match="invalid storage key"):
        storage.temp_path(key)
    with pytest.raises(ValueError, match="invalid storage key"):
        storage.put_file(tmp_path / "f", key)
    with pytest.raises(ValueError, match="invalid storage key"):
        storage.stat(key)


def test_list_objects_is_recursive_sorted_and_leaves_out_dot_names(storage: Storage):
    for name in ("b.txt", "a/z.txt", "a/b/c.txt", ".a.part", "a/.tmp-1/x"):
        put(storage, f"jobs/j1/{name}", name.encode())
    put(storage, "jobs/j10/other.txt", b"a sibling whose name starts the same")

    keys = [item.key for item in storage.list_objects("jobs/j1")]

    assert keys == ["jobs/j1/a/b/c.txt", "jobs/j1/a/z.txt", "jobs/j1/b.txt"]
    sizes = {item.key: item.size for item in storage.list_objects("jobs/j1")}
    assert sizes["jobs/j1/a/b/c.txt"] == len(b"a/b/c.txt")
    assert storage.list_objects("jobs/none") == []


def test_has_prefix_tells_a_directory_from_a_single_object(storage: Storage):
    put(storage, "jobs/j/checkpoints/step-10/adapter/adapter_config.json", b"{}")
    assert storage.has_prefix("jobs/j/checkpoints/step-10/adapter")
    assert storage.has_prefix("jobs/j")
    assert not storage.has_prefix("jobs/j/checkpoints/step-10/adapter/adapter_config.json")
    assert not storage.has_prefix("jobs/j/checkpoints/step-20")


def test_delete_prefix_removes_everything_below_and_nothing_beside(storage: Storage):
    for key in ("jobs/j/a.txt", "jobs/j/b/c.txt", "jobs/j2/keep.txt"):
        put(storage, key, b"x")
    storage.delete_prefix("jobs/j")
    assert storage.list_objects("jobs/j") == []
    assert storage.exists("jobs/j2/keep.txt")


def test_push_then_pull_round_trips_a_directory(storage: Storage, tmp_path: Path):
    write_files(tmp_path / "made", TREE)

    storage.push(tmp_path / "made", "jobs/j/adapter")
    storage.pull("jobs/j/adapter", tmp_path / "elsewhere")

    assert tree(tmp_path / "elsewhere") == TREE
    assert [
        item.key.removeprefix("jobs/j/adapter/") for item in storage.list_objects("jobs/j/adapter")
    ] == sorted(TREE)


def test_push_replaces_changed_files_and_drops_stale_objects(storage: Storage, tmp_path: Path):
    write_files(tmp_path / "v1", {"keep.txt": b"one", "gone.txt": b"old"})
    storage.push(tmp_path / "v1", "exports/e")
    write_files(tmp_path / "v2", {"keep.txt": b"two", "new.txt": b"added"})

    storage.push(tmp_path / "v2", "exports/e")

    keys = {item.key for item in storage.list_objects("exports/e")}
    assert keys == {"exports/e/keep.txt", "exports/e/new.txt"}
    assert read(storage, "exports/e/keep.txt") == b"two"


def test_push_leaves_out_dot_names_and_symlinks(storage: Storage, tmp_path: Path):
    write_files(tmp_path / "dir", {"real.txt": b"kept", ".x.part": b"temp"})
    secret = tmp_path / "secret.txt"
    secret.write_bytes(b"outside")
    (tmp_path / "dir" / "link.txt").symlink_to(secret)

    storage.push(tmp_path / "dir", "jobs/j/adapter")

    assert [item.key for item in storage.list_objects("jobs/j/adapter")] == [
        "jobs/j/adapter/real.txt"
    ]


def test_push_removes_the_marker_first_and_stores_it_last(
    storage: Storage, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    prefix = "jobs/j/checkpoints/step-10"
    put(storage, f"{prefix}/COMPLETE", b"10\n")  # an earlier copy of the same step
    write_files(tmp_path / "step-10", {**TREE, "COMPLETE": b"10\n", "optimizer.pt": b"o"})
    seen: list[tuple[str, bool]] = []
    original = storage.put_file

    def recording(source: Path, key: str) -> None:
        seen.append((key.removeprefix(f"{prefix}/"), storage.exists(f"{prefix}/COMPLETE")))
        original(source, key)

    monkeypatch.setattr(storage, "put_file", recording)

    storage.push(tmp_path / "step-10", prefix, last="COMPLETE")

    assert seen[-1][0] == "COMPLETE"
    assert sorted(name for name, _ in seen) == sorted([*TREE, "COMPLETE", "optimizer.pt"])
    # While the other files went up, no marker claimed the copy was complete.
    assert not any(marker_present for _, marker_present in seen)
    assert read(storage, f"{prefix}/COMPLETE") == b"10\n"


def test_pull_mirrors_the_prefix_and_writes_the_marker(storage: Storage, tmp_path: Path):
    write_files(tmp_path / "made", {**TREE, "COMPLETE": b"done"})
    storage.push(tmp_path / "made", "jobs/j/checkpoints/step-5", last="COMPLETE")
    target = tmp_path / "copy"
    write_files(target, {"stale.txt": b"left from an older copy"})

    storage.pull("jobs/j/checkpoints/step-5", target, last="COMPLETE")

    assert tree(target) == {**TREE, "COMPLETE": b"done"}


def test_fetch_gives_a_local_file_with_the_bytes(storage: Storage):
    put(storage, "files/org-1/data", b'{"text": "x"}\n')
    path = storage.fetch("files/org-1/data")
    assert path.read_bytes() == b'{"text": "x"}\n'
    again = storage.fetch("files/org-1/data")
    assert again == path and again.stat().st_mtime_ns == path.stat().st_mtime_ns


def test_workspace_push_and_release(storage: Storage, settings: Settings):
    workspace = storage.workspace("jobs/j")
    write_files(workspace / "adapter", TREE)

    storage.push(workspace / "adapter", "jobs/j/adapter")
    storage.release("jobs/j")

    assert len(storage.list_objects("jobs/j/adapter")) == len(TREE)
    if isinstance(storage, LocalStorage):
        # The data dir is its own workspace: nothing is copied, nothing dropped.
        assert workspace == settings.data_dir / "jobs" / "j"
        assert storage.local_path("jobs/j/adapter") == workspace / "adapter"
        assert tree(workspace / "adapter") == TREE
    else:
        assert storage.local_path("jobs/j/adapter") is None
        assert workspace.is_relative_to(settings.resolved_cache_dir())
        assert not workspace.exists()
