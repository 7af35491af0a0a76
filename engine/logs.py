"""The server's log files in ``cfg.log_dir``, named as TorchServe names them:

- ``ts_log.log``: the ``dagserve.*`` loggers (INFO and up), WARNING and up also on stderr
  when the server runs in the foreground;
- ``access_log.log``: one line per HTTP request, buffered in memory and written about once a
  second, so a request costs a string format and a list append, never a system call;
- ``model_log.log``: what worker processes print, each line prefixed with its worker.
"""

from __future__ import annotations

import asyncio
import json
import logging
import logging.config
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from .errors import ConfigError
from .tasks import TaskHandle, TaskOwner

if TYPE_CHECKING:
    from .config import Config

SERVER_LOG = "ts_log.log"
ACCESS_LOG = "access_log.log"
MODEL_LOG = "model_log.log"
MODEL_METRICS_LOG = "model_metrics.log"
SERVER_METRICS_LOG = "ts_metrics.log"
LOGGER_NAME = "dagserve"

_LOG_FORMAT = "%(asctime)s [%(levelname)-5s] %(threadName)s %(name)s - %(message)s"


class _Clock:
    """``2024-05-01T12:00:00,123``-style timestamps (log4j's ISO8601), with the part up to the
    second formatted once per second instead of once per line."""

    def __init__(self) -> None:
        self._second = -1
        self._prefix = ""

    def now(self) -> str:
        t = time.time()
        second = int(t)
        if second != self._second:
            self._second = second
            self._prefix = time.strftime("%Y-%m-%dT%H:%M:%S", time.localtime(second))
        return f"{self._prefix},{int((t - second) * 1000):03d}"


class _LineBuffer:
    """Lines kept in memory and appended to a file by ``flush``: by the owner's timer, when
    more than ``max_lines`` are waiting, and on ``close``."""

    def __init__(self, path: Path, max_lines: int, interval_s: float) -> None:
        if max_lines < 1:
            raise ValueError(f"max_lines must be at least 1, got {max_lines}")
        if interval_s <= 0:
            raise ValueError(f"interval_s must be positive, got {interval_s}")
        self.path = path
        self.file: TextIO = open(path, "a", encoding="utf-8", errors="replace")
        self.max_lines = max_lines
        self.interval_s = interval_s
        self._lines: list[str] = []
        self._timer: TaskHandle | None = None
        self._closed = False

    def add(self, line: str) -> None:
        """``line`` ends with a newline."""
        if self._closed:
            return
        self._lines.append(line)
        if len(self._lines) > self.max_lines:
            self.flush()

    def flush(self) -> None:
        if not self._lines or self._closed:
            return
        lines, self._lines = self._lines, []
        self.file.write("".join(lines))
        self.file.flush()

    def start(self, tasks: TaskOwner) -> None:
        """Start the flush timer as a task of ``tasks`` (idempotent)."""
        if self._timer is None and not self._closed:
            self._timer = tasks.spawn(self._run, name=f"flushing {self.path.name}")

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self.interval_s)
            try:
                self.flush()
            except OSError as exc:  # a full disk must not kill the timer or the server
                logging.getLogger(LOGGER_NAME).error("cannot write %s: %s", self.path, exc)

    def close(self) -> None:
        if self._closed:
            return
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        try:
            self.flush()
        finally:
            self._closed = True
            self.file.close()

    @property
    def pending(self) -> int:
        return len(self._lines)


class _BufferedLog:
    """What the log files share: a line buffer with a flush timer."""

    _buffer: _LineBuffer

    def start(self, tasks: TaskOwner) -> None:
        self._buffer.start(tasks)

    def flush(self) -> None:
        self._buffer.flush()

    def close(self) -> None:
        self._buffer.close()


class AccessLog(_BufferedLog):
    """``access_log.log``: ``<time> - <remote> "<METHOD> <path> HTTP/1.1" <status> <ms>``
    (TorchServe's access line, the last field in milliseconds)."""

    def __init__(self, path: Path, max_lines: int = 1000, interval_s: float = 1.0) -> None:
        self._buffer = _LineBuffer(path, max_lines, interval_s)
        self._clock = _Clock()

    def record(self, remote: str | None, method: str, path: str, status: int,
               duration_ms: float) -> None:
        self._buffer.add(f'{self._clock.now()} - {remote or "-"} "{method} {path} HTTP/1.1" '
                         f'{status} {int(duration_ms)}\n')

    @property
    def pending(self) -> int:
        """Lines recorded but not yet written."""
        return self._buffer.pending


class ModelLog(_BufferedLog):
    """``model_log.log``. ``file`` is the open file itself, for a worker whose output goes
    there unprefixed; ``copy_stream`` copies a pipe line by line with a prefix."""

    def __init__(self, path: Path, max_lines: int = 1000, interval_s: float = 1.0) -> None:
        self._buffer = _LineBuffer(path, max_lines, interval_s)
        self._clock = _Clock()

    @property
    def file(self) -> TextIO:
        return self._buffer.file

    def write_line(self, prefix: str, text: str, level: str = "INFO") -> None:
        self._buffer.add(f"{self._clock.now()} [{level:<5}] {prefix} - {text}\n")

    async def copy_stream(self, reader: asyncio.StreamReader, prefix: str,
                          level: str = "INFO") -> None:
        """Copy ``reader`` (a worker's stdout or stderr pipe) until EOF, one log line per line
        (``<time> [INFO ] <prefix> - <line>``). Lines longer than the reader's limit are split,
        undecodable bytes replaced. The buffer is flushed at EOF, so a dying worker's last
        words are on disk at once. Run it as one task per pipe."""
        split = False  # the previous piece was a long line cut at the reader's limit
        while True:
            try:
                chunk = await reader.readuntil(b"\n")
            except asyncio.IncompleteReadError as exc:  # EOF; a last line without newline
                if exc.partial:
                    self.write_line(prefix, _decode(exc.partial), level)
                break
            except asyncio.LimitOverrunError as exc:  # a very long line: copy it in pieces
                self.write_line(prefix, _decode(await reader.readexactly(max(exc.consumed, 1))),
                                level)
                split = True
                continue
            if not (split and chunk == b"\n"):
                self.write_line(prefix, _decode(chunk), level)
            split = False
        self._buffer.flush()


def _decode(chunk: bytes) -> str:
    return chunk.decode("utf-8", errors="replace").rstrip("\r\n")


class MetricsLog:
    """``model_metrics.log`` (what handlers record) and ``ts_metrics.log`` (the server's own
    figures, written periodically), in TorchServe's line format
    ``Name.Unit:value|#Dim:v,...|#hostname:h,timestamp:epoch``."""

    def __init__(self, log_dir: Path, max_lines: int = 1000, interval_s: float = 1.0) -> None:
        self.model = _LineBuffer(log_dir / MODEL_METRICS_LOG, max_lines, interval_s)
        self.server = _LineBuffer(log_dir / SERVER_METRICS_LOG, max_lines, interval_s)
        self._clock = _Clock()

    def _line(self, name: str, unit: str, value: float, dims: dict, hostname: str) -> str:
        dim_text = ",".join(f"{k}:{v}" for k, v in dims.items())
        return (f"{self._clock.now()} - {name}.{unit}:{value:g}|#{dim_text}"
                f"|#hostname:{hostname},timestamp:{int(time.time())}\n")

    def record_model(self, name: str, unit: str, value: float, dims: dict,
                     hostname: str) -> None:
        self.model.add(self._line(name, unit, value, dims, hostname))

    def record_server(self, name: str, unit: str, value: float, dims: dict,
                      hostname: str) -> None:
        self.server.add(self._line(name, unit, value, dims, hostname))

    def start(self, tasks: TaskOwner) -> None:
        self.model.start(tasks)
        self.server.start(tasks)

    def close(self) -> None:
        self.model.close()
        self.server.close()


@dataclass
class Logs:
    """The open log files of one server run. ``start`` (inside the event loop) starts the
    flush timers; ``close`` flushes everything and detaches the logging handlers."""

    log_dir: Path
    access: AccessLog
    model: ModelLog
    metrics: MetricsLog
    handlers: list[logging.Handler]
    logger: logging.Logger

    def start(self, tasks: TaskOwner) -> None:
        self.access.start(tasks)
        self.model.start(tasks)
        self.metrics.start(tasks)

    def close(self) -> None:
        self.access.close()
        self.model.close()
        self.metrics.close()
        for handler in self.handlers:
            self.logger.removeHandler(handler)
            handler.close()
        self.handlers.clear()


def setup_logging(cfg: "Config", *, access_max_lines: int = 1000,
                  flush_interval_s: float = 1.0) -> Logs:
    """Create ``cfg.log_dir`` and open the three logs. With ``cfg.log_config`` a Python
    logging configuration is applied on top (``.json``/``.yaml``/``.yml``: dictConfig,
    ``.ini``/``.conf``/``.cfg``: fileConfig); TorchServe's log4j2 XML files cannot be
    honoured, which is said in ts_log.log."""
    log_dir = Path(cfg.log_dir)
    try:
        log_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create log directory {log_dir}: {exc.strerror}") from None

    logger = logging.getLogger(LOGGER_NAME)
    logger.setLevel(logging.INFO)
    formatter = logging.Formatter(_LOG_FORMAT)
    file_handler = logging.FileHandler(log_dir / SERVER_LOG, encoding="utf-8")
    file_handler.setFormatter(formatter)
    file_handler.setLevel(logging.INFO)
    handlers: list[logging.Handler] = [file_handler]
    if cfg.foreground:
        err_handler = logging.StreamHandler(sys.stderr)
        err_handler.setFormatter(formatter)
        err_handler.setLevel(logging.WARNING)
        handlers.append(err_handler)
    for handler in handlers:
        logger.addHandler(handler)

    logs = Logs(log_dir=log_dir,
                access=AccessLog(log_dir / ACCESS_LOG, access_max_lines, flush_interval_s),
                model=ModelLog(log_dir / MODEL_LOG, access_max_lines, flush_interval_s),
                metrics=MetricsLog(_made(Path(getattr(cfg, "metrics_dir", log_dir))),
                                   access_max_lines, flush_interval_s),
                handlers=handlers, logger=logger)
    if cfg.log_config is not None:
        _apply_log_config(Path(cfg.log_config), logger)
    return logs


def _made(directory: Path) -> Path:
    """``METRICS_LOCATION``: the metrics logs' directory, created like the log directory."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create metrics directory {directory}: "
                          f"{exc.strerror}") from None
    return directory


def _apply_log_config(path: Path, logger: logging.Logger) -> None:
    suffix = path.suffix.lower()
    try:
        if suffix in (".json", ".yaml", ".yml"):
            text = path.read_text()
            if suffix == ".json":
                data = json.loads(text)
            else:
                import yaml

                data = yaml.safe_load(text)
            if not isinstance(data, dict):
                raise ValueError("expected a mapping (logging.config.dictConfig's schema)")
            logging.config.dictConfig({"disable_existing_loggers": False, **data})
        elif suffix in (".ini", ".conf", ".cfg"):
            if not path.is_file():
                raise FileNotFoundError(2, "No such file or directory")
            logging.config.fileConfig(path, disable_existing_loggers=False)
        else:
            logger.warning("log config %s is not a Python logging configuration "
                           "(.json, .yaml, .ini); TorchServe's log4j2 files are not supported. "
                           "Using the default logs.", path)
    except OSError as exc:
        raise ConfigError(f"cannot read log config {path}: {exc.strerror}") from None
    except Exception as exc:  # json/yaml/configparser errors, dictConfig's ValueError
        raise ConfigError(f"invalid log config {path}: {exc}") from None
