"""Stopping a render on request (Ctrl-C, the editor's Cancel) within one attention layer.

A render spends its time inside torch operators, where Python cannot raise
``KeyboardInterrupt``; at 4096×4096 on a CPU one denoising step takes many minutes, so waiting
for the step to end is no answer. Instead:

* :func:`stop_checks` installs forward pre-hooks on the pipeline's modules — each attention
  module, each block, and each component itself (the denoiser's call is a step boundary) — for
  the duration of a render, and removes them afterwards, also on error. A hook checks a plain
  :class:`threading.Event` and raises :class:`Stopped` when it is set. It is a no-op while
  ``torch.compiler.is_compiling()``, so a compiled denoiser traces no check (and no graph
  break); a denoiser compiled as one graph is then stopped at its next call, at the step
  boundary, by the hook on the compiled module itself, which runs outside the graph.
* :class:`StopCallback` is the same check as a ``callback_on_step_end``.
* :func:`stop_on_sigint` turns SIGINT into that event for the ``rpg`` command: a watcher thread
  reads the signal from a wakeup pipe, so it runs even while the main thread is inside a long
  torch operator. The first SIGINT sets the event (the render stops after the current layer);
  a second ends the process at once with status 130. Outside a render (loading a model,
  writing files) the first SIGINT raises ``KeyboardInterrupt`` as usual.

No processor is changed: the checks are hooks around modules, outside the attention code.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

__all__ = ["StopCallback", "Stopped", "stop_checks", "stop_on_sigint"]

#: Exit status of a process ended by SIGINT (128 + 2), as shells report it.
EXIT_INTERRUPTED = 130


class Stopped(KeyboardInterrupt):
    """A render stopped because its stop event was set.

    A ``KeyboardInterrupt`` so that no ``except Exception`` on the way swallows it, and the
    ``rpg`` command exits with status 130 as for any interrupt.
    """


def _is_stop_point(module: Any) -> bool:
    """Attention modules (diffusers' have a ``processor``) and blocks: the layer boundaries."""
    if hasattr(module, "processor") and hasattr(module, "set_processor"):
        return True
    return type(module).__name__.endswith(("Block", "Block2D", "BlockFlat", "Attention"))


def _modules_of(pipe: Any) -> list[Any]:
    """The ``torch.nn.Module`` components of a diffusers pipeline (or an :class:`RPG`)."""
    import torch

    pipe = getattr(pipe, "pipe", pipe)  # an RPG holds the diffusers pipeline as .pipe
    components = getattr(pipe, "components", None)
    if not isinstance(components, dict):
        return [pipe] if isinstance(pipe, torch.nn.Module) else []
    return [m for m in components.values() if isinstance(m, torch.nn.Module)]


@contextmanager
def stop_checks(pipe: Any, event: threading.Event) -> Iterator[int]:
    """Check ``event`` before every attention layer and block of ``pipe`` while inside.

    Yields how many hooks were installed. Raises :class:`Stopped` from the render when the
    event is set. The hooks are removed on exit, also when the render fails or stops.
    """
    import torch

    def check(module: Any, args: Any) -> None:
        del module, args
        if torch.compiler.is_compiling():
            return
        if event.is_set():
            raise Stopped("the render was stopped")

    handles = []
    try:
        for component in _modules_of(pipe):
            handles.append(component.register_forward_pre_hook(check))
            for module in component.modules():
                if module is not component and _is_stop_point(module):
                    handles.append(module.register_forward_pre_hook(check))
        yield len(handles)
    finally:
        for handle in handles:
            handle.remove()


class StopCallback:
    """A ``callback_on_step_end`` that raises :class:`Stopped` once ``event`` is set."""

    def __init__(self, event: threading.Event) -> None:
        self.event = event

    def __call__(self, pipe: Any, step: int, timestep: Any, tensors: dict[str, Any]) -> Any:
        del pipe, step, timestep
        if self.event.is_set():
            raise Stopped("the render was stopped")
        return tensors


class _SigintWatcher:
    """Counts SIGINTs from a wakeup pipe in a thread; see :func:`stop_on_sigint`."""

    def __init__(self, event: threading.Event, command: str) -> None:
        self.event = event
        self.command = command
        self.rendering = False
        self.count = 0
        self.read_fd, self.write_fd = os.pipe()
        os.set_blocking(self.write_fd, False)
        self.thread = threading.Thread(target=self._watch, name="rpg-sigint", daemon=True)

    def _watch(self) -> None:
        while True:
            try:
                data = os.read(self.read_fd, 64)
            except OSError:
                return
            if not data:  # the write end was closed: the command is over
                os.close(self.read_fd)
                return
            for number in data:
                if number != signal.SIGINT:
                    continue
                self.count += 1
                if self.count >= 2:
                    os.write(2, f"\n{self.command}: stopped at once\n".encode())
                    os._exit(EXIT_INTERRUPTED)
                self.event.set()
                if self.rendering:
                    os.write(
                        2,
                        f"\n{self.command}: stopping after the current layer "
                        "(Ctrl-C again to quit at once)\n".encode(),
                    )

    def handler(self, signum: int, frame: Any) -> None:
        del signum, frame
        if not self.rendering:
            raise KeyboardInterrupt

    @contextmanager
    def render(self, pipe: Any) -> Iterator[None]:
        """Around one render of ``pipe``: SIGINT stops it at the next layer (see above).

        A SIGINT that arrives after the last layer still stops the command before it writes.
        """
        with stop_checks(pipe, self.event):
            self.rendering = True
            try:
                yield
            finally:
                self.rendering = False
        if self.event.is_set():
            raise Stopped("the render was stopped")

    def close(self) -> None:
        started = self.thread.ident is not None
        os.close(self.write_fd)  # a running watcher sees the end of the pipe, closes its end
        if not started:
            os.close(self.read_fd)


@contextmanager
def stop_on_sigint(command: str = "rpg") -> Iterator[_SigintWatcher]:
    """SIGINT handling for a command that renders; yields the watcher.

    Set ``watcher.rendering`` while a render runs inside :func:`stop_checks` with
    ``watcher.event``: the first SIGINT then stops it at the next layer; outside a render the
    first SIGINT raises ``KeyboardInterrupt``. A second SIGINT always ends the process at once
    (status 130). Only the main thread can install signal handlers; elsewhere this only yields
    a watcher whose event nothing sets.
    """
    event = threading.Event()
    watcher = _SigintWatcher(event, command)
    if threading.current_thread() is not threading.main_thread():
        try:
            yield watcher
        finally:
            watcher.close()
        return
    previous_handler = signal.getsignal(signal.SIGINT)
    previous_fd = signal.set_wakeup_fd(watcher.write_fd, warn_on_full_buffer=False)
    signal.signal(signal.SIGINT, watcher.handler)
    watcher.thread.start()
    try:
        yield watcher
    finally:
        signal.signal(signal.SIGINT, previous_handler)
        signal.set_wakeup_fd(previous_fd)
        watcher.close()
        sys.stderr.flush()
