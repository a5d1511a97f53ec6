"""The client's parts on their own: SSE frames, safe extraction, connection errors."""

from __future__ import annotations

import io
import tarfile
from pathlib import Path

import httpx
import pytest

from app.client.archives import UnsafeArchive, extract_tarball
from app.client.http import ClientError, LoraforgeClient
from app.client.sse import Frame, parse_frames


def test_frames_are_split_on_blank_lines_and_keep_alives_are_skipped():
    lines = [
        "id: evt-1",
        "event: metrics",
        'data: {"step": 1}',
        "",
        ": keep-alive",
        "",
        "event: message",
        "data: line one",
        "data: line two",
        "",
        "event: done",
        'data: {"status": "succeeded"}',
        "",
    ]
    assert list(parse_frames(lines)) == [
        Frame("metrics", '{"step": 1}', "evt-1"),
        Frame("message", "line one\nline two"),
        Frame("done", '{"status": "succeeded"}'),
    ]


def test_an_unterminated_frame_is_not_yielded():
    assert list(parse_frames(["event: metrics", "data: {}"])) == []


def tarball(tmp_path: Path, *members: tarfile.TarInfo, content: bytes = b"x") -> Path:
    path = tmp_path / "archive.tar.gz"
    with tarfile.open(path, "w:gz") as tar:
        for member in members:
            if member.isfile():
                member.size = len(content)
                tar.addfile(member, io.BytesIO(content))
            else:
                tar.addfile(member)
    return path


def test_extract_returns_the_top_directory(tmp_path: Path):
    top = tarfile.TarInfo("ftjob-1-adapter")
    top.type = tarfile.DIRTYPE
    archive = tarball(tmp_path, top, tarfile.TarInfo("ftjob-1-adapter/adapter_model.safetensors"))
    (extracted,) = extract_tarball(archive, tmp_path / "out")
    assert extracted == tmp_path / "out" / "ftjob-1-adapter"
    assert (extracted / "adapter_model.safetensors").read_bytes() == b"x"


@pytest.mark.parametrize("name", ["../escape.txt", "/tmp/absolute.txt", "a/../../escape.txt"])
def test_extract_refuses_names_outside_the_target(tmp_path: Path, name: str):
    archive = tarball(tmp_path, tarfile.TarInfo(name))
    with pytest.raises(UnsafeArchive):
        extract_tarball(archive, tmp_path / "out")
    assert not (tmp_path / "escape.txt").exists()


def test_extract_refuses_links(tmp_path: Path):
    link = tarfile.TarInfo("adapter/passwd")
    link.type = tarfile.SYMTYPE
    link.linkname = "/etc/passwd"
    with pytest.raises(UnsafeArchive, match="not a plain file"):
        extract_tarball(tarball(tmp_path, link), tmp_path / "out")
    assert not (tmp_path / "out" / "adapter").exists()


def test_server_error_message_becomes_the_client_error():
    def handler(request: httpx.Request) -> httpx.Response:
        assert request.headers["Authorization"] == "Bearer lf-test"
        error = {"message": "no fine-tuning job with id 'x'", "code": "job_not_found"}
        return httpx.Response(404, json={"error": error})

    http = httpx.Client(base_url="http://server", transport=httpx.MockTransport(handler))
    with pytest.raises(ClientError) as caught:
        LoraforgeClient(http, "lf-test").get("/fine_tuning/jobs/x")
    assert caught.value.message == "no fine-tuning job with id 'x'"
    assert caught.value.status == 404


def test_a_non_json_failure_still_says_what_happened():
    http = httpx.Client(
        base_url="http://server",
        transport=httpx.MockTransport(lambda _: httpx.Response(502, text="<html>bad gateway")),
    )
    with pytest.raises(ClientError, match="HTTP 502 Bad Gateway"):
        LoraforgeClient(http, "lf-test").get("/files")


def test_connect_needs_a_key_and_accepts_a_base_url_with_v1():
    with pytest.raises(ClientError, match="LORAFORGE_API_KEY"):
        LoraforgeClient.connect("http://127.0.0.1:8000", None)
    client = LoraforgeClient.connect("http://example.test:9/v1/", "lf-x")
    assert str(client.http.base_url) == "http://example.test:9"
