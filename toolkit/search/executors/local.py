"""The local executor: jobs in this process, one after another (the serial path)."""

from __future__ import annotations

import os
import socket
from typing import Any, Callable, Iterator, Sequence

from toolkit.search.executors.base import ExecutorSpec, Factory, Outcome, WorkerFn, run_job


class LocalExecutor:
    """Jobs in this process, one after another, in the order given (today's serial path)."""

    parallel = False

    def __init__(self, factory: Factory | None = None, fn: WorkerFn | None = None):
        if (factory is None) == (fn is None):
            raise TypeError("LocalExecutor needs exactly one of factory and fn")
        self._factory, self._fn = factory, fn
        self.retries = 0
        self.spec = ExecutorSpec()

    def start(self) -> "LocalExecutor":
        if self._fn is None:
            self._fn = self._factory()
        return self

    def workers(self) -> list[dict[str, Any]]:
        return [{"pid": os.getpid(), "node_id": "local", "host": socket.gethostname()}]

    def imap_unordered(self, items: Sequence[Any], should_stop: Callable[[], bool] | None = None
                       ) -> Iterator[tuple[int, Outcome]]:
        self.start()
        where = self.workers()[0]
        for i, item in enumerate(items):
            if should_stop is not None and should_stop():
                return
            yield i, run_job(self._fn, item, where, keep_exception=True)

    def close(self) -> None:
        pass

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.close()
