"""Instruments that check the per-step path is fit for a GPU and ``torch.compile``.

:class:`HostSyncCounter` counts the operations that make the host wait for the device
(``.item()``, ``float(tensor)``, ``torch.equal``, data-dependent shapes, device-to-host copies)
while a model's forward runs; :class:`CompileCounter` is a ``torch.compile`` backend that
counts graphs and notes when each was compiled, so a test or a benchmark can tell a warm-up
compile from a recompile later in the run. Both work on the CPU: an op that would synchronise a
GPU is the same op on the CPU, it only costs nothing there.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import torch
from torch.utils._python_dispatch import TorchDispatchMode

__all__ = ["CompileCounter", "HostSyncCounter", "graph_breaks"]

_aten = torch.ops.aten
#: Ops whose result the host must read from the device before it can go on.
_SYNC_OPS = {
    _aten._local_scalar_dense: "item",  # .item(), float(t), int(t), bool(t)
    _aten.equal: "equal",  # torch.equal
    _aten.is_nonzero: "is_nonzero",  # if tensor:
    _aten.nonzero: "nonzero",  # output shape depends on the values
}


def _device(x: Any) -> torch.device | None:
    return x.device if isinstance(x, torch.Tensor) else None


class HostSyncCounter(TorchDispatchMode):
    """Count host-synchronising ops (and host↔device copies) run while the mode is active.

    ``counts`` maps a kind (``"item"`` — also ``float(t)``, ``int(t)``, ``if t:`` —,
    ``"equal"``, ``"is_nonzero"``, ``"nonzero"``, ``"tolist"``, ``"device_to_host"``) to its
    number; ``host_to_device`` counts copies the other way (not a
    sync, but a per-step upload that should have been made once before the loop).
    :meth:`watch` turns the mode on for every forward of a module only.
    """

    def __init__(self) -> None:
        super().__init__()
        self.counts: Counter[str] = Counter()
        self.host_to_device = 0
        #: Forwards watched by :meth:`watch`.
        self.calls = 0

    def __enter__(self) -> HostSyncCounter:
        # On the CPU, .tolist() reads memory without dispatching an op (on a GPU it copies to
        # the host first); count it at the Python level while the mode is on.
        original = torch.Tensor.tolist
        counts = self.counts

        def tolist(tensor: torch.Tensor) -> Any:
            counts["tolist"] += 1
            return original(tensor)

        self._tolist = original
        torch.Tensor.tolist = tolist  # type: ignore[method-assign,assignment]
        super().__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        super().__exit__(*exc)
        torch.Tensor.tolist = self._tolist  # type: ignore[method-assign]

    @property
    def syncs(self) -> int:
        """All host-synchronising ops counted so far."""
        return sum(self.counts.values())

    def __torch_dispatch__(
        self,
        func: Any,
        types: Any,
        args: tuple[Any, ...] = (),
        kwargs: dict[str, Any] | None = None,
    ) -> Any:
        kwargs = kwargs or {}
        kind = _SYNC_OPS.get(func.overloadpacket)
        if kind is not None:
            self.counts[kind] += 1
        elif func.overloadpacket in (_aten._to_copy, _aten.copy_):
            if func.overloadpacket is _aten._to_copy:
                src, dst = _device(args[0]), kwargs.get("device") or _device(args[0])
            else:
                dst, src = _device(args[0]), _device(args[1])
            if src is not None and dst is not None:
                dst = torch.device(dst)
                if src.type != "cpu" and dst.type == "cpu":
                    self.counts["device_to_host"] += 1
                elif src.type == "cpu" and dst.type not in ("cpu", "meta"):
                    self.host_to_device += 1
        return func(*args, **kwargs)

    @contextmanager
    def watch(self, module: torch.nn.Module) -> Iterator[HostSyncCounter]:
        """Count inside every forward of ``module`` (its pre-hooks included) in the block."""
        depth = [0]

        def enter(*_: Any, **__: Any) -> None:
            depth[0] += 1
            if depth[0] == 1:
                self.calls += 1
                self.__enter__()

        def leave(*_: Any, **__: Any) -> None:
            depth[0] -= 1
            if depth[0] == 0:
                self.__exit__(None, None, None)

        pre = module.register_forward_pre_hook(enter, prepend=True)
        post = module.register_forward_hook(leave, always_call=True)
        try:
            yield self
        finally:
            pre.remove()
            post.remove()


class CompileCounter:
    """A ``torch.compile`` backend (eager execution) that records when each graph was compiled.

    ``mark(label)`` names the phase of the run (e.g. ``"render 0 step 1"``); every compiled graph
    is recorded with the label current at the time, so compiles after the first step of the
    first render are late compiles; :attr:`recompiles` counts graphs compiled again for a
    frame that already had one, whenever it happened. :func:`graph_breaks` reads dynamo's own
    break counter.
    """

    def __init__(self) -> None:
        self.phase = "start"
        self.graphs: list[str] = []
        #: Graphs compiled again for a frame that already had one (a guard failed).
        self.recompiles = 0

    def mark(self, phase: str) -> None:
        self.phase = phase

    def __call__(self, gm: torch.fx.GraphModule, example_inputs: Any) -> Callable[..., Any]:
        del example_inputs
        from torch._guards import CompileContext

        self.graphs.append(self.phase)
        compile_id = CompileContext.current_compile_id()
        if compile_id is not None and (compile_id.frame_compile_id or 0) > 0:
            self.recompiles += 1
        return gm.forward

    def compiled_in(self, *phases: str) -> int:
        """Graphs compiled while the phase was one of ``phases``."""
        return sum(1 for p in self.graphs if p in phases)


def graph_breaks() -> Counter[str]:
    """Dynamo's graph-break reasons and counts since the last ``torch._dynamo.reset()``."""
    from torch._dynamo.utils import counters

    return Counter({reason.split("\n")[0]: n for reason, n in counters["graph_break"].items()})
