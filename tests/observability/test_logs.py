"""Log lines as app/observability/logs.py writes them: JSON with the bound fields, text on a
terminal, the choice made by the setting or by what stdout is."""

from __future__ import annotations

import io
import json
import logging
import os
import pty
import warnings
from collections.abc import Iterator

import pytest

from app.observability.logs import annotate, bind, configure_logging, resolve_format


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging changes the process's root logger: put it back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers = handlers
    root.setLevel(level)
    logging.captureWarnings(False)


def lines(stream: io.StringIO) -> list[str]:
    return stream.getvalue().splitlines()


def test_json_lines_carry_the_bound_fields_extras_and_the_traceback(restore_logging: None):
    stream = io.StringIO()
    assert configure_logging("json", "INFO", stream) == "json"
    log = logging.getLogger("loraforge.test")
    log.info("outside")
    with bind(job_id="ftjob-1", attempt=2):
        annotate(organization="org-1")
        log.info("step %d done", 3, extra={"tokens": 96})
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("failed")
    log.debug("below the level")
    outside, inside, failed = (json.loads(line) for line in lines(stream))
    assert outside["message"] == "outside" and "job_id" not in outside
    assert inside["message"] == "step 3 done"
    assert inside["level"] == "info" and inside["logger"] == "loraforge.test"
    assert (inside["job_id"], inside["attempt"], inside["organization"]) == ("ftjob-1", 2, "org-1")
    assert inside["tokens"] == 96
    assert inside["time"].endswith("Z") and inside["pid"] == os.getpid()
    assert failed["level"] == "error" and "ValueError: boom" in failed["exception"]


def test_a_traceback_stays_on_its_one_json_line(restore_logging: None):
    stream = io.StringIO()
    configure_logging("json", "INFO", stream)
    try:
        raise RuntimeError("line one\nline two")
    except RuntimeError:
        logging.getLogger("loraforge.test").exception("with\nnewlines")
    (line,) = lines(stream)
    assert json.loads(line)["message"] == "with\nnewlines"


def test_text_lines_show_the_bound_fields(restore_logging: None):
    stream = io.StringIO()
    assert configure_logging("text", "INFO", stream) == "text"
    with bind(request_id="abc123", organization="org-1"):
        logging.getLogger("loraforge.test").warning("slow request")
    (line,) = lines(stream)
    assert "WARNING" in line and "loraforge.test: slow request" in line
    assert line.endswith("[request_id=abc123 organization=org-1]")
    with pytest.raises(ValueError):
        json.loads(line)


def test_auto_is_text_on_a_terminal_and_json_on_a_pipe():
    leader, follower = pty.openpty()
    read_end, write_end = os.pipe()
    with os.fdopen(follower, "w") as terminal, os.fdopen(write_end, "w") as pipe:
        assert resolve_format("auto", terminal) == "text"
        assert resolve_format("auto", pipe) == "json"
        assert resolve_format("json", terminal) == "json"
        assert resolve_format("text", pipe) == "text"
    os.close(leader)
    os.close(read_end)


def test_configuring_again_replaces_the_handler_and_warnings_become_records(
    restore_logging: None,
):
    first, second = io.StringIO(), io.StringIO()
    configure_logging("json", "INFO", first)
    configure_logging("json", "INFO", second)
    with warnings.catch_warnings():
        warnings.simplefilter("always")
        warnings.warn("a library's warning", UserWarning, stacklevel=1)
    assert first.getvalue() == ""
    (line,) = lines(second)
    record = json.loads(line)
    assert record["logger"] == "py.warnings" and "a library's warning" in record["message"]


def test_bound_fields_end_with_their_block_and_none_is_not_bound():
    with bind(job_id="ftjob-1", attempt=None) as fields:
        assert fields == {"job_id": "ftjob-1"}
        with bind(attempt=1) as inner:
            assert inner == {"job_id": "ftjob-1", "attempt": 1}
    annotate(job_id="nowhere")  # outside any block: nothing to add to
    with bind() as empty:
        assert empty == {}
