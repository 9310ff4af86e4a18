"""The boundary with foreign threads (the only module that uses threading locks)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING, Any

import trio

from .errors import RuntimeClosed

if TYPE_CHECKING:
    from .cell import Cell
    from .system import System


class ThreadGate:
    def __init__(self, system: System) -> None:
        self._system = system
        self._lock = threading.Lock()
        self._loop_thread: int | None = None
        self._token: trio.lowlevel.TrioToken | None = None
        self._closed = True

    def on_loop_thread(self) -> bool:
        return threading.get_ident() == self._loop_thread

    def open(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token
        self._loop_thread = threading.get_ident()
        self._closed = False

    def close(self) -> None:
        with self._lock:
            self._closed = True

    def tell(self, cell: Cell, msg: Any) -> None:
        raise RuntimeClosed("foreign-thread tell is not wired yet")

    def ask(self, cell: Cell, msg: Any, timeout: float | None) -> Any:
        raise RuntimeClosed("foreign-thread ask is not wired yet")
