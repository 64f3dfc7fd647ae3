"""Counting what the host asks of the device: ATen ops and host-synchronising ops, on any device, the CPU included.

A GPU runs whatever the host sends it, so a hot loop's cost on a GPU can be predicted on a CPU from two counts:

* every ATen op in eager mode is a kernel launch (views aside), about 5-10 us of host time each;
* a synchronising op (``.item()``, ``.tolist()``, ``int(t)``, ``if t:``, ``nonzero``, boolean-mask indexing and
  the other ops whose output size depends on tensor values) makes the host wait until the device has caught up,
  so launches stop overlapping with compute. ``Tensor.tolist()`` and ``.numpy()`` read values without an ATen op
on a CPU tensor; they are counted as synchronising too.

:class:`OpCounter` is a ``TorchDispatchMode`` that counts both. With ``strict`` it raises :class:`HostSync` at the
first synchronising op beyond an allowance (the engine's loops may make one stop check per generated token),
which is how the tests hold the loops sync-free. Views (``view``, ``slice``, ...) are counted apart: they cost host
time but launch nothing. Ops inside a compiled graph are not seen (the graph is one launch).
"""

from __future__ import annotations

from collections import Counter

import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode

# ops whose result the host must read (the scalar) or whose output shape depends on tensor values
SYNC_OPS = frozenset({
    "_local_scalar_dense",  # .item(), .tolist(), int(t), float(t)
    "is_nonzero",  # bool(t), `if t:`
    "nonzero", "argwhere", "masked_select", "unique_dim", "_unique", "_unique2", "unique_consecutive",
    "equal", "allclose", "bincount", "histogram",
})
# value-dependent only without an explicit output size
_SIZE_FROM_VALUES = {"repeat_interleave": "output_size"}
VIEW_OPS = frozenset({
    "view", "_unsafe_view", "reshape", "slice", "select", "unsqueeze", "squeeze", "transpose", "t", "permute",
    "expand", "alias", "as_strided", "unflatten", "flatten", "narrow", "split", "split_with_sizes", "chunk",
    "unbind", "detach", "lift_fresh", "view_as", "diagonal", "_reshape_alias", "unfold", "movedim",
})


class HostSync(RuntimeError):
    """A synchronising op ran where :class:`OpCounter` (``strict``) allowed none."""


def _is_bool_index(name: str, args) -> bool:
    """Indexing or index_put_ with a boolean mask: a hidden ``nonzero``."""
    if name not in ("index", "index_put_", "index_put", "_index_put_impl_") or len(args) < 2:
        return False
    indices = args[1]
    return isinstance(indices, (list, tuple)) and any(
        isinstance(i, torch.Tensor) and i.dtype in (torch.bool, torch.uint8) for i in indices)


def sync_kind(func, args, kwargs) -> str | None:
    """The synchronising kind of an ATen op (its name, or ``"<name>[bool]"`` for mask indexing), None if none."""
    name = func._overloadpacket.__name__
    if name in SYNC_OPS:
        return name
    if name in _SIZE_FROM_VALUES and func._overloadname in ("Tensor", "self_Tensor") and \
            kwargs.get(_SIZE_FROM_VALUES[name]) is None:
        return name
    if _is_bool_index(name, args):
        return f"{name}[bool]"
    return None


# tensor methods that read values on the host without an ATen op on a CPU tensor (on a GPU: a copy, then a wait)
_HOST_READS = {torch.Tensor.tolist: "tolist", torch.Tensor.numpy: "numpy"}


class _HostReads(TorchFunctionMode):
    def __init__(self, counter: "OpCounter"):
        super().__init__()
        self.counter = counter

    def __torch_function__(self, func, types, args=(), kwargs=None):
        if func in _HOST_READS:
            self.counter._sync(_HOST_READS[func], func)
        return func(*args, **(kwargs or {}))


class OpCounter(TorchDispatchMode):
    """Counts ATen ops (``ops``), of which views (``views``), and host-synchronising ops (``syncs``) by name.

    ``strict=True`` raises :class:`HostSync` once more than ``allow_syncs`` synchronising ops ran; raise the
    allowance with :meth:`allow` (e.g. one per generated token)."""

    def __init__(self, strict: bool = False, allow_syncs: int = 0):
        super().__init__()
        self.ops: Counter = Counter()
        self.syncs: Counter = Counter()
        self.strict, self.allowance = strict, allow_syncs

    def __enter__(self):
        self._reads = _HostReads(self)
        self._reads.__enter__()
        return super().__enter__()

    def __exit__(self, *exc):
        try:
            return super().__exit__(*exc)
        finally:
            self._reads.__exit__(*exc)

    def _sync(self, kind: str, func) -> None:
        self.syncs[kind] += 1
        if self.strict and self.sync_total > self.allowance:
            raise HostSync(f"host-synchronising op {kind} ({func}) beyond the {self.allowance} allowed")

    def allow(self, n: int = 1) -> None:
        self.allowance += n

    @property
    def total(self) -> int:
        return sum(self.ops.values())

    @property
    def views(self) -> int:
        return sum(n for name, n in self.ops.items() if name in VIEW_OPS)

    @property
    def sync_total(self) -> int:
        return sum(self.syncs.values())

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = func._overloadpacket.__name__
        self.ops[name] += 1
        kind = sync_kind(func, args, kwargs)
        if kind is not None:
            self._sync(kind, func)
        return func(*args, **kwargs)
