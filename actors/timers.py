"""The durable timer queue: one thread and one heap for every timer of every run.

Due times are absolute and live in each run's snapshot; this queue only holds
them in memory to know when to wake. After a restart recovery re-arms them
from the snapshots, so a timer fires at its original time, or at once if that
time passed while the server was down. A later ``schedule`` for the same run
and name replaces the earlier one.
"""

from __future__ import annotations

import heapq
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterable

log = logging.getLogger(__name__)

FireCallback = Callable[[str, str, float], None]


class TimerQueue:
    def __init__(self, fire: FireCallback) -> None:
        self._fire = fire
        # One key tuple per timer, shared by the heap entry and the map: a waiting
        # run holds two timers, so every object here counts at 100,000 runs.
        self._heap: list[tuple[float, int, tuple[str, str]]] = []
        self._current: dict[tuple[str, str], int] = {}
        self._seq = itertools.count()
        self._cond = threading.Condition()
        self._stopped = False
        self._thread = threading.Thread(target=self._loop, name="userflow-timers", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def schedule(self, run_id: str, name: str, due: float) -> None:
        with self._cond:
            seq = next(self._seq)
            key = (run_id, name)
            self._current[key] = seq
            heapq.heappush(self._heap, (due, seq, key))
            if self._heap[0][1] == seq:
                self._cond.notify()

    def schedule_many(self, timers: Iterable[tuple[str, str, float]]) -> None:
        """``schedule`` each (run id, name, due) at once: recovery arms thousands."""
        with self._cond:
            for run_id, name, due in timers:
                seq = next(self._seq)
                key = (run_id, name)
                self._current[key] = seq
                self._heap.append((due, seq, key))
            heapq.heapify(self._heap)
            self._cond.notify()

    def cancel(self, run_id: str, name: str) -> None:
        with self._cond:
            self._current.pop((run_id, name), None)

    def __len__(self) -> int:
        with self._cond:
            return len(self._current)

    def _loop(self) -> None:
        while True:
            with self._cond:
                while not self._stopped:
                    if not self._heap:
                        self._cond.wait()
                        continue
                    due, seq, key = self._heap[0]
                    if self._current.get(key) != seq:
                        heapq.heappop(self._heap)  # replaced or cancelled
                        continue
                    delay = due - time.time()
                    if delay <= 0:
                        heapq.heappop(self._heap)
                        del self._current[key]
                        run_id, name = key
                        break
                    self._cond.wait(timeout=delay)
                else:
                    return
            try:
                self._fire(run_id, name, due)
            except Exception:
                log.exception("timer %s of run %s could not be delivered", name, run_id)
