"""Log files: ts_log.log through logging, the buffered access log, the model log copier."""

from __future__ import annotations

import asyncio
import json
import logging
import re
import sys
from pathlib import Path

import anyio
import pytest

from dagserve.engine import logs as logs_mod
from dagserve.engine.config import Config
from dagserve.engine.errors import ConfigError
from dagserve.engine.logs import AccessLog, ModelLog, setup_logging
from dagserve.engine.tasks import TaskOwner


@pytest.fixture
def opened():
    """Logs opened by a test, closed after it so no handler leaks into the next one."""
    made = []
    yield made
    for item in made:
        item.close()


def cfg_for(tmp_path: Path, **kw) -> Config:
    return Config(workdir=tmp_path, log_dir=tmp_path / "logs", **kw)


def test_setup_creates_the_three_logs(tmp_path, opened):
    logs = setup_logging(cfg_for(tmp_path))
    opened.append(logs)
    for name in ("ts_log.log", "access_log.log", "model_log.log"):
        assert (tmp_path / "logs" / name).is_file()


def test_server_log_gets_dagserve_loggers(tmp_path, opened, capsys):
    logs = setup_logging(cfg_for(tmp_path))
    opened.append(logs)
    logging.getLogger("dagserve.test").info("hello %s", "there")
    logging.getLogger("dagserve.test").debug("not at INFO")
    logging.getLogger("other.library").warning("not ours")
    logs.close()
    text = (tmp_path / "logs" / "ts_log.log").read_text()
    assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} \[INFO \] \S+ dagserve.test - hello there$",
                     text, re.M), text
    assert "not at INFO" not in text and "not ours" not in text
    assert "hello" not in capsys.readouterr().err  # background: nothing on stderr


def test_foreground_mirrors_warnings_to_stderr(tmp_path, opened, capsys):
    logs = setup_logging(cfg_for(tmp_path, foreground=True))
    opened.append(logs)
    log = logging.getLogger("dagserve.test")
    log.info("quiet info")
    log.warning("loud warning")
    err = capsys.readouterr().err
    assert "loud warning" in err and "quiet info" not in err


def test_close_detaches_handlers(tmp_path):
    logger = logging.getLogger("dagserve")
    before = list(logger.handlers)
    logs = setup_logging(cfg_for(tmp_path, foreground=True))
    assert len(logger.handlers) == len(before) + 2
    logs.close()
    assert logger.handlers == before
    logging.getLogger("dagserve.test").info("after close")
    assert "after close" not in (tmp_path / "logs" / "ts_log.log").read_text()


def test_log_dir_that_cannot_be_made(tmp_path):
    (tmp_path / "file").write_text("")
    with pytest.raises(ConfigError, match="cannot create log directory"):
        setup_logging(Config(log_dir=tmp_path / "file" / "logs"))


def test_json_log_config_is_applied(tmp_path, opened):
    extra = tmp_path / "extra.log"
    conf = {"version": 1, "handlers": {"extra": {"class": "logging.FileHandler",
                                                 "filename": str(extra), "level": "INFO"}},
            "loggers": {"dagserve.custom": {"handlers": ["extra"], "level": "INFO"}}}
    (tmp_path / "log.json").write_text(json.dumps(conf))
    logs = setup_logging(cfg_for(tmp_path, log_config=tmp_path / "log.json"))
    opened.append(logs)
    custom = logging.getLogger("dagserve.custom")
    try:
        custom.info("to both")
        for h in custom.handlers:
            h.flush()
        assert "to both" in extra.read_text()
    finally:
        for h in list(custom.handlers):
            custom.removeHandler(h)
            h.close()


@pytest.mark.parametrize("name,content", [("bad.json", "{not json"), ("bad.json", "[1]"),
                                          ("bad.yaml", "version: 7\n")])
def test_bad_log_config(tmp_path, name, content):
    (tmp_path / name).write_text(content)
    with pytest.raises(ConfigError, match="invalid log config"):
        logs = setup_logging(cfg_for(tmp_path, log_config=tmp_path / name))
        logs.close()
    for h in list(logging.getLogger("dagserve").handlers):  # setup got that far
        if isinstance(h, logging.FileHandler) and str(tmp_path) in h.baseFilename:
            logging.getLogger("dagserve").removeHandler(h)
            h.close()


def test_log4j_config_is_reported_not_applied(tmp_path, opened):
    (tmp_path / "log4j2.xml").write_text("<Configuration/>")
    logs = setup_logging(cfg_for(tmp_path, log_config=tmp_path / "log4j2.xml"))
    opened.append(logs)
    logs.close()
    assert "log4j2 files are not supported" in (tmp_path / "logs" / "ts_log.log").read_text()


# ---- access log ----------------------------------------------------------------------------

ACCESS_RE = re.compile(r'^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3} - (\S+) "(\S+) (\S+) HTTP/1.1" (\d+) (\d+)$')


def test_access_log_buffers_until_flush(tmp_path):
    path = tmp_path / "access_log.log"
    access = AccessLog(path)
    try:
        access.record("127.0.0.1", "POST", "/predictions/m", 200, 12.7)
        access.record(None, "GET", "/ping", 404, 0.2)
        assert access.pending == 2
        assert path.read_text() == ""  # nothing written per request
        access.flush()
        lines = path.read_text().splitlines()
        assert [ACCESS_RE.match(line).groups() for line in lines] == [
            ("127.0.0.1", "POST", "/predictions/m", "200", "12"),
            ("-", "GET", "/ping", "404", "0")]
        assert access.pending == 0
    finally:
        access.close()


def test_access_log_flushes_when_buffer_is_full(tmp_path):
    path = tmp_path / "access_log.log"
    access = AccessLog(path, max_lines=3)
    try:
        for i in range(3):
            access.record("r", "GET", f"/{i}", 200, 1)
        assert path.read_text() == ""
        access.record("r", "GET", "/3", 200, 1)
        assert len(path.read_text().splitlines()) == 4
    finally:
        access.close()


def test_access_log_close_flushes_and_stops_recording(tmp_path):
    path = tmp_path / "access_log.log"
    access = AccessLog(path)
    access.record("r", "GET", "/a", 200, 1)
    access.close()
    access.close()  # twice is fine
    access.record("r", "GET", "/b", 200, 1)  # after close: dropped, no error
    assert [ACCESS_RE.match(x).group(3) for x in path.read_text().splitlines()] == ["/a"]


def test_access_log_timer_flushes(tmp_path):
    path = tmp_path / "access_log.log"

    async def scenario():
        async with anyio.create_task_group() as group:
            tasks = TaskOwner(group)
            access = AccessLog(path, interval_s=0.02)
            access.start(tasks)
            access.start(tasks)  # idempotent
            access.record("r", "GET", "/timer", 200, 1)
            for _ in range(500):  # wait for the timer; no wall-clock bound asserted
                await asyncio.sleep(0.01)
                if path.read_text():
                    break
            text = path.read_text()
            access.close()
            await tasks.close()
        return text

    assert "/timer" in asyncio.run(scenario())


@pytest.mark.parametrize("bad", [{"max_lines": 0}, {"interval_s": 0}])
def test_access_log_bad_settings(tmp_path, bad):
    with pytest.raises(ValueError):
        AccessLog(tmp_path / "a.log", **bad)


# ---- model log -----------------------------------------------------------------------------

MODEL_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d,\d{3} \[(\w+) *\] (\S+) - (.*)$")


def model_lines(path: Path) -> list[tuple[str, str, str]]:
    return [MODEL_RE.match(line).groups() for line in path.read_text().splitlines()]


def test_copy_stream_prefixes_lines(tmp_path):
    path = tmp_path / "model_log.log"

    async def scenario():
        model = ModelLog(path)
        reader = asyncio.StreamReader(limit=16)
        reader.feed_data(b"first line\r\nbad \xff byte\n")
        reader.feed_data(b"x" * 40 + b"\n")  # longer than the reader's limit
        reader.feed_data(b"no newline at the end")
        reader.feed_eof()
        await model.copy_stream(reader, "W-0-resnet_1.0-stderr", level="WARN")
        text_after_eof = path.read_text()  # flushed at EOF, before close
        model.close()
        return text_after_eof

    assert asyncio.run(scenario())
    lines = model_lines(path)
    assert all(level == "WARN" and prefix == "W-0-resnet_1.0-stderr" for level, prefix, _ in lines)
    texts = [t for _, _, t in lines]
    assert texts[0] == "first line"
    assert texts[1] == "bad \ufffd byte"
    assert "".join(texts[2:-1]) == "x" * 40  # over the limit, still copied, no empty line
    assert texts[-1] == "no newline at the end"


def test_copy_stream_splits_a_line_that_outgrows_the_limit(tmp_path):
    path = tmp_path / "model_log.log"

    async def scenario():
        model = ModelLog(path)
        reader = asyncio.StreamReader(limit=16)
        task = asyncio.ensure_future(model.copy_stream(reader, "W-0"))
        reader.feed_data(b"y" * 40)  # no newline yet, more than the limit
        for _ in range(5):
            await asyncio.sleep(0)
        reader.feed_data(b"yy\nnext\n")
        reader.feed_eof()
        await task
        model.close()

    asyncio.run(scenario())
    texts = [t for _, _, t in model_lines(path)]
    assert texts[-1] == "next"
    assert "".join(texts[:-1]) == "y" * 42 and len(texts) > 2


def test_copy_stream_from_a_real_worker_pipe(tmp_path):
    path = tmp_path / "model_log.log"

    async def scenario():
        model = ModelLog(path)
        proc = await asyncio.create_subprocess_exec(
            sys.executable, "-c",
            "import sys; print('loading model'); print('oops', file=sys.stderr); print('ready')",
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
        await asyncio.gather(model.copy_stream(proc.stdout, "W-1-m-stdout"),
                             model.copy_stream(proc.stderr, "W-1-m-stderr", level="WARN"))
        await proc.wait()
        model.close()

    asyncio.run(scenario())
    assert sorted(model_lines(path)) == [("INFO", "W-1-m-stdout", "loading model"),
                                         ("INFO", "W-1-m-stdout", "ready"),
                                         ("WARN", "W-1-m-stderr", "oops")]


def test_model_log_file_is_open_for_direct_output(tmp_path, opened):
    logs = setup_logging(cfg_for(tmp_path))
    opened.append(logs)
    logs.model.file.write("direct\n")
    logs.model.file.flush()
    logs.model.write_line("W-2", "prefixed")
    logs.close()
    text = (tmp_path / "logs" / "model_log.log").read_text()
    assert "direct\n" in text and "W-2 - prefixed" in text


def test_logs_start_runs_both_timers(tmp_path, opened):
    logs = setup_logging(cfg_for(tmp_path), flush_interval_s=0.02)
    opened.append(logs)

    async def scenario():
        async with anyio.create_task_group() as group:
            tasks = TaskOwner(group)
            logs.start(tasks)
            logs.access.record("r", "GET", "/x", 200, 1)
            logs.model.write_line("W-3", "hi")
            for _ in range(500):
                await asyncio.sleep(0.01)
                if (logs.log_dir / logs_mod.ACCESS_LOG).read_text() and \
                        (logs.log_dir / logs_mod.MODEL_LOG).read_text():
                    break
            logs.close()
            await tasks.close()

    asyncio.run(scenario())
    assert "/x" in (tmp_path / "logs" / "access_log.log").read_text()
    assert "W-3 - hi" in (tmp_path / "logs" / "model_log.log").read_text()
