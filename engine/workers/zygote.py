"""The fork server: ``python -P -m dagserve.engine.workers.zygote --fd N``.

Started once per server, it imports what every worker needs (dagserve's worker and handler
SDK and Pillow: ~11 MiB, under 0.1 s), moves those objects out of the garbage collector's view,
and then forks a worker on each request of the frontend. torch is imported (and frozen the
same way) the first time a worker that uses it is asked for (``"torch": true``), so a server
whose models need no torch never loads it. A forked worker shares those pages with the fork
server and every other worker (copy-on-write) instead of importing torch on its own: that is
most of a small model's worker (about 230 MiB each when every worker imported torch itself).
PyTorch's own DataLoader forks after importing torch in the same way.

Importing torch later is as safe as at start: the fork server is single-threaded and never
initialises CUDA. (numpy's OpenBLAS, which torch imports, starts a thread pool, but its
fork handler stops that pool before every fork and the fork server makes no BLAS call to
restart it.)

The frontend talks over the connected socket ``N`` (a socketpair end), one JSON object per
line:

``{"op": "fork", "id": n, "settings": "<WorkerSettings JSON>", "cwd", "log", "env", "torch"}``
    -> ``{"op": "forked", "id": n, "pid": p, "torch": loaded}`` or
    ``{"op": "error", "id": n, "message"}``
``{"op": "exit", "pid": p, "code": c}``  (fork server -> frontend) when a worker ends.

It sends ``{"op": "ready"}`` once loaded. When the frontend closes the socket the fork server
exits; the workers, each in a session of its own, are stopped by the frontend.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import selectors
import signal
import socket
import sys
import traceback

PRELOAD = ("PIL.Image", "dagserve.engine.workers.main", "dagserve.engine.handler.service")
TORCH_PRELOAD = ("torch", "dagserve.engine.handler.base_handler",
                 "dagserve.engine.handler.vision_handler")


def _preload(names: tuple[str, ...]) -> None:
    import importlib

    for name in names:
        try:
            importlib.import_module(name)
        except ImportError as exc:  # an optional part is missing: workers import it later
            print(f"fork server: not preloading {name}: {exc}", file=sys.stderr)
    gc.collect()
    gc.freeze()


class ForkServer:
    def __init__(self, ctrl: socket.socket):
        self.ctrl = ctrl
        self.selector = selectors.DefaultSelector()
        self.wake_r, self.wake_w = os.pipe()
        os.set_blocking(self.wake_r, False)
        os.set_blocking(self.wake_w, False)
        self._buffer = b""
        self.torch_tried = False

    def send(self, message: dict) -> None:
        self.ctrl.sendall(json.dumps(message, separators=(",", ":")).encode() + b"\n")

    def run(self) -> int:
        signal.set_wakeup_fd(self.wake_w)
        signal.signal(signal.SIGCHLD, lambda *_: None)
        self.selector.register(self.ctrl, selectors.EVENT_READ, "ctrl")
        self.selector.register(self.wake_r, selectors.EVENT_READ, "child")
        self.send({"op": "ready", "pid": os.getpid(), "torch": _torch_loaded()})
        while True:
            for key, _ in self.selector.select():
                if key.data == "child":
                    self._drain_wakeups()
                    self._reap()
                elif not self._read_requests():
                    return 0

    def _drain_wakeups(self) -> None:
        try:
            while os.read(self.wake_r, 512):
                pass
        except BlockingIOError:
            pass

    def _reap(self) -> None:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            self.send({"op": "exit", "pid": pid, "code": os.waitstatus_to_exitcode(status)})

    def _read_requests(self) -> bool:
        data = self.ctrl.recv(1 << 16)
        if not data:
            return False
        self._buffer += data
        while b"\n" in self._buffer:
            line, self._buffer = self._buffer.split(b"\n", 1)
            request = json.loads(line)
            if request.get("torch") and not self.torch_tried:
                self.torch_tried = True  # once: a missing torch is the worker's error to tell
                _preload(TORCH_PRELOAD)
            try:
                pid = self._fork(request)
            except OSError as exc:
                self.send({"op": "error", "id": request.get("id"), "message": str(exc)})
            else:
                self.send({"op": "forked", "id": request.get("id"), "pid": pid,
                           "torch": _torch_loaded()})
        return True

    def _fork(self, request: dict) -> int:
        sys.stdout.flush()  # nothing buffered may be written twice
        sys.stderr.flush()
        pid = os.fork()
        if pid:
            return pid
        code = 70
        try:
            code = self._become_worker(request)
        except BaseException:  # noqa: BLE001 - the child must never return into the loop
            traceback.print_exc()
        finally:
            try:
                sys.stdout.flush()
                sys.stderr.flush()
            finally:
                os._exit(code)

    def _become_worker(self, request: dict) -> int:
        os.setsid()  # its own process group: the frontend kills the worker and its children
        signal.set_wakeup_fd(-1)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        self.selector.close()
        self.ctrl.close()
        os.close(self.wake_r)
        os.close(self.wake_w)
        log = request.get("log")
        out = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644) if log else \
            os.open(os.devnull, os.O_WRONLY)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        os.close(out)
        os.close(null)
        _name_process("dagserve-worker")
        os.chdir(request["cwd"])
        os.environ.update(request.get("env") or {})
        _reseed()
        from dagserve.engine.workers import main as worker_main

        return worker_main.main(["--settings", request["settings"]])


def _torch_loaded() -> bool:
    return "torch" in sys.modules


def _name_process(name: str) -> None:
    """What ``ps -o comm`` and ``top`` show (the command line stays the fork server's)."""
    try:
        with open("/proc/self/comm", "w") as fh:
            fh.write(name[:15])
    except OSError:
        pass


def _reseed() -> None:
    """A forked worker must not replay the fork server's random streams."""
    import random

    random.seed()
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.seed()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m dagserve.engine.workers.zygote")
    parser.add_argument("--fd", type=int, required=True, help="the connected control socket")
    args = parser.parse_args(argv)
    ctrl = socket.socket(fileno=args.fd)
    _preload(PRELOAD)
    try:
        return ForkServer(ctrl).run()
    except (BrokenPipeError, ConnectionResetError):
        return 0


if __name__ == "__main__":
    sys.exit(main())
