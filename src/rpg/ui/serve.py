"""Serving the editor from ``rpg ui``: bind first, check the output folder, stop on Ctrl-C.

The order matters for the user: the port is bound and the output folder checked *before* the
model loads (seconds to minutes), so a busy port or an unwritable ``--out`` is said at once and
leaves nothing behind; uvicorn then serves on the socket that is already bound.

Stopping: the first Ctrl-C (or SIGTERM) stops the server at once, without waiting for open
connections, and cancels the renders (the running one stops at its next step); the process
then exits with 130. A second Ctrl-C ends the process immediately, whatever it is doing,
after removing the temporary output folder.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType
from typing import Any

from rpg.cli.checks import UsageError
from rpg.ui.guard import is_loopback

__all__ = [
    "bind",
    "exposure_warning",
    "prepare_output_dir",
    "second_interrupt_exits",
    "serve",
]


def bind(host: str, port: int) -> socket.socket:
    """A listening TCP socket on ``host:port``, or a :class:`UsageError` that says why not."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise UsageError(
            f"--host {host}: not an address of this computer ({exc.strerror})"
        ) from None
    family, kind, proto, _, address = infos[0]
    sock = socket.socket(family, kind, proto)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT, not a listener
        if family == socket.AF_INET6 and host in ("::", ""):
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        sock.bind(address)
        sock.listen(128)
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise UsageError(
                f"port {port} on {host} is already in use (another rpg ui?); "
                "pick another with --port"
            ) from None
        if exc.errno == errno.EACCES:
            raise UsageError(
                f"--port {port}: not allowed to listen there (ports below 1024 need root); "
                "pick another with --port"
            ) from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise UsageError(f"--host {host}: not an address of this computer") from None
        raise UsageError(f"cannot listen on {host}:{port}: {exc.strerror}") from None
    return sock


def prepare_output_dir(path: Path) -> list[Path]:
    """Make sure rendered PNGs can be written to ``path``; returns the folders it created.

    A file in the way, a read-only folder or a folder that cannot be created is a
    :class:`UsageError` naming ``--out`` (checked with a real file, so it also holds for root
    and read-only file systems). The caller removes the created folders if startup fails.
    """
    created: list[Path] = []
    if path.exists() and not path.is_dir():
        raise UsageError(f"--out {path}: is a file, not a folder; name a folder for the images")
    missing = [p for p in (path, *path.parents) if not p.exists()]
    try:
        for folder in reversed(missing):
            folder.mkdir()
            created.append(folder)
        with tempfile.NamedTemporaryFile(dir=path, prefix=".rpg-ui-check-"):
            pass
    except OSError as exc:
        remove_created(created)
        if isinstance(exc, NotADirectoryError):
            reason = "part of the path is a file"
        else:
            reason = exc.strerror or str(exc)
        raise UsageError(f"--out {path}: cannot write images there ({reason})") from None
    return created


def remove_created(folders: list[Path]) -> None:
    """Remove folders made by :func:`prepare_output_dir`, innermost first, if still empty."""
    for folder in reversed(folders):
        with contextlib.suppress(OSError):
            folder.rmdir()


@contextlib.contextmanager
def second_interrupt_exits() -> Iterator[None]:
    """While loading the model: the first Ctrl-C interrupts as usual, a second ends the process.

    Loading can take minutes inside native code, and a second Ctrl-C while Python unwinds the
    first would otherwise print a traceback. The previous handler is restored afterwards, unless
    a Ctrl-C came (the process is on its way out, and a second one must still end it).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    interrupted = False

    def handle(sig: int, frame: FrameType | None) -> None:
        nonlocal interrupted
        if interrupted:
            os.write(2, b"rpg ui: stopped at once\n")
            os._exit(128 + sig)
        interrupted = True
        raise KeyboardInterrupt

    previous = signal.signal(signal.SIGINT, handle)
    try:
        yield
    finally:
        if not interrupted:  # after a Ctrl-C, the next one still ends the process at once
            signal.signal(signal.SIGINT, previous)


def exposure_warning(host: str, port: int, model: str, out: str) -> str | None:
    """What a non-loopback ``--host`` exposes, or ``None`` for this computer only."""
    if is_loopback(host):
        return None
    where = "every network interface" if host in ("0.0.0.0", "::", "") else host
    return (
        f"listening on {where}, port {port}: anyone who can reach this computer there can "
        f"render with {model}, use the planners (and their API keys), and read and write the "
        f"images in {out}. The app has no login; use --host 127.0.0.1 unless this network is "
        "trusted"
    )


def serve(
    app: Any,
    sock: socket.socket,
    *,
    on_stop: Callable[[], None],
    on_force_exit: Callable[[], None],
    announce: Callable[[str], None],
) -> int:
    """Serve ``app`` on the bound ``sock`` until Ctrl-C; the exit status (0, or 128 + signal).

    ``on_stop`` runs at the first signal (cancel the renders, answer waiting requests, so that
    the one second uvicorn then waits for open requests is enough), ``on_force_exit`` just
    before a second signal ends the process (remove temporary files); ``announce`` prints a
    line.
    """
    import uvicorn

    class Server(uvicorn.Server):
        stopped_by = 0

        @contextlib.contextmanager
        def capture_signals(self) -> Iterator[None]:
            if threading.current_thread() is not threading.main_thread():
                yield
                return

            def handle(sig: int, frame: FrameType | None) -> None:
                if self.should_exit:
                    on_force_exit()
                    os.write(2, b"rpg ui: stopped at once\n")
                    os._exit(128 + sig)
                self.stopped_by = sig
                os.write(2, b"rpg ui: stopping (press Ctrl-C again to quit at once)\n")
                # What uvicorn says while stopping (a request cut short) is not the user's
                # concern; requests still waiting are answered at once by on_stop.
                logging.getLogger("uvicorn.error").setLevel(logging.CRITICAL + 1)
                self.should_exit = True
                on_stop()

            for sig in (signal.SIGINT, signal.SIGTERM):
                signal.signal(sig, handle)
            # The handlers stay installed: a Ctrl-C while Python winds down still ends the
            # process at once, and never prints a KeyboardInterrupt traceback.
            yield

    config = uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=1)
    server = Server(config)
    host, port = sock.getsockname()[:2]
    announce(f"http://{_url_host(host)}:{port}/")
    server.run(sockets=[sock])
    on_stop()
    return 128 + server.stopped_by if server.stopped_by else 0


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::"):
        return "127.0.0.1"
    return f"[{host}]" if ":" in host else host


def force_remove(path: Path | None) -> None:
    """Remove a temporary output folder on the way out, ignoring what cannot be removed."""
    if path is not None:
        shutil.rmtree(path, ignore_errors=True)
