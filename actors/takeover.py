"""Every node's share of the runs nobody executes, on a store many nodes share.

A waiting run has no owner; its earliest timer is a column of its row. A
dead node's runs keep its name as owner until its heartbeat lapses. Each node
polls for both (``Claims``), a batch at a time: each row is claimed by one
node only (the store locks what it claims and skips what another node has
locked), and the claim is what makes a timer fire once across nodes, since
only the claiming node may commit the run until it releases it. Claimed runs
go to the supervisor, which activates them and fires their due timers.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable

from userflow.storage.atomic import StorageError
from userflow.storage.port import Claimed, Claims

log = logging.getLogger(__name__)

BATCH = 100


class ClaimPoller:
    def __init__(self, claims: Claims, hand_over: Callable[[list[Claimed]], None], every: float) -> None:
        self._claims = claims
        self._hand_over = hand_over
        self._every = every
        self._stop = threading.Event()
        self._failing = False
        self._thread = threading.Thread(target=self._loop, name="userflow-claims", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread.is_alive():
            self._thread.join(timeout=5)

    def poll(self) -> int:
        """One round: claim what is due and what dead nodes left; how many runs."""
        claimed = self._claims.claim_orphans(BATCH)
        if claimed:
            log.info("node %s took over %d runs of nodes that stopped renewing", self._claims.node_id, len(claimed))
        claimed += self._claims.claim_due(BATCH)
        if claimed:
            self._hand_over(claimed)
        return len(claimed)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                full = self.poll() >= BATCH  # a full batch: more may be waiting, go on at once
                if self._failing:
                    log.info("node %s: claiming runs again", self._claims.node_id)
                self._failing = False
            except StorageError as exc:
                if not self._failing:
                    log.error("node %s: cannot claim runs: %s", self._claims.node_id, exc.strerror or exc)
                self._failing, full = True, False
            if not full:
                self._stop.wait(self._every)
