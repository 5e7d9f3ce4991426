"""Executing a plan: one transaction with one reverter for kernel steps and records.

Everything a transaction changes, a record written or dropped, a kernel step
run, registers its undo as it happens.  On any failure (a refusing kernel, a
full state directory, an interrupt) `rollback()` undoes all of it in reverse
order: the host and the records are as they were before the operation.
"""

from __future__ import annotations

from vmnet import log
from vmnet.errors import VmnetError

TYPE_CHECKING = False  # typing costs ~2 ms to import; mypy treats this name as true
if TYPE_CHECKING:
    from collections.abc import Callable

    from vmnet.engine.steps import Step
    from vmnet.kernel.protocol import Kernel
    from vmnet.state.records import BridgeRecord, VmRecord
    from vmnet.state.store import StateStore

    Progress = Callable[[int, int], None] | None


class Transaction:
    """Applies steps and record changes; remembers how to undo each one."""

    __slots__ = ("_undo", "k", "netns", "store")

    def __init__(self, k: Kernel, store: StateStore, netns: str | None = None) -> None:
        self.k = k
        self.store = store
        self.netns = netns
        # (what, undo): `what` is a Step (its `ip` text is made only if it is needed)
        self._undo: list[tuple[str | Step, Callable[[], None]]] = []

    # -- records -------------------------------------------------------------
    def put_vm(self, rec: VmRecord, prev: VmRecord | None, *, index: bool = True) -> None:
        """Write a VM record; undo puts `prev` back (or drops the record)."""
        self.store.put_vm(rec, index=index)
        if prev is None:
            self._undo.append((f"drop record {rec.vm}",
                               lambda: self.store.drop_vm(rec.vm, rec)))
        else:
            self._undo.append((f"restore record {rec.vm}", lambda: self.store.put_vm(prev)))

    def put_bridge(self, rec: BridgeRecord, prev: BridgeRecord | None) -> None:
        self.store.put_bridge(rec)
        if prev is None:
            self._undo.append((f"drop record {rec.bridge}",
                               lambda: self.store.drop_bridge(rec.bridge)))
        else:
            self._undo.append((f"restore record {rec.bridge}",
                               lambda: self.store.put_bridge(prev)))

    # -- kernel steps ----------------------------------------------------------
    def run(self, steps: list[Step], progress: Progress = None) -> None:
        """Run `steps` in order, each one's down twin registered once it has run."""
        debug = log.verbose()
        total = len(steps)
        for i, step in enumerate(steps):
            if debug:
                log.debug(step.ip(self.netns))
            step.run(self.k)
            twin = step.undo()
            if twin is not None:
                self._undo.append((twin, self._runner(twin)))
            if progress is not None:
                progress(i + 1, total)

    def _runner(self, step: Step) -> Callable[[], None]:
        return lambda: step.run(self.k)

    # -- the end -------------------------------------------------------------
    def commit(self) -> None:
        self._undo.clear()

    def rollback(self) -> None:
        """Undo everything done so far, newest first; report what could not be undone."""
        while self._undo:
            item, undo = self._undo.pop()
            what = item if isinstance(item, str) else item.ip(self.netns)
            try:
                log.debug(f"rollback: {what}")
                undo()
            except (VmnetError, OSError) as e:  # keep undoing the rest; report what stayed
                msg = e.one_line() if isinstance(e, VmnetError) else str(e)
                log.warning(f"rollback of {what!r} failed: {msg}")

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        if exc_type is not None:
            self.rollback()
        else:
            self.commit()
