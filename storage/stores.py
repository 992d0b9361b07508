"""Everything durable of one server, in one place: the data dir, or a PostgreSQL database.

The server asks its :class:`Stores` for each kind of thing it keeps (runs,
operator accounts, webhook deliveries, the key tokens are derived from) and
never learns which backend answers. ``open_stores`` picks one from the
settings: the database when a URL is given, else the data dir.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from userflow.storage.datadir import DataDir
from userflow.storage.deliveries import DeliveryStore
from userflow.storage.delivery_file import DeliveryFile
from userflow.storage.operators import OperatorFile, OperatorStore
from userflow.storage.port import EventJournal, RunStore
from userflow.storage.runs import FileRunStore

if TYPE_CHECKING:
    from userflow.storage.postgres.nodes import NodeView


class Stores(Protocol):
    where: str  # for messages: "data dir PATH", or "database URL" (the URL without its password)
    operators: OperatorStore

    def run_store(self) -> RunStore:
        """The store of runs (made once, at the engine's start; the engine closes it)."""
        ...

    def deliveries(self, node_id: str | None = None) -> DeliveryStore:
        """The webhook deliveries, claimed as the node ``node_id`` (the data dir has one node)."""
        ...

    def event_journal(self) -> EventJournal | None:
        """Where the event stream is kept so its ids outlive a process; None: in memory only."""
        ...

    def secret(self) -> bytes:
        """The key verification tokens are derived from: made once, then always the same."""
        ...

    def available(self) -> bool:
        """Whether what needs the store can be served now (``/readyz``)."""
        ...

    def join(self, node_id: str, timeout: float, address: str | None = None) -> None:
        """Become one of the nodes executing the store's runs (blocking, at start)."""
        ...

    def nodes(self) -> list[NodeView] | None:
        """The nodes sharing the store; None where one process holds it."""
        ...

    def close(self) -> None: ...


class FileStores:
    """The data dir: runs in ``runs/``, ``packs.sqlite`` and the journal, accounts in ``operators.json``,
    deliveries in ``webhooks.sqlite``, the token key in ``secret.key``."""

    def __init__(self, data_dir: DataDir) -> None:
        self.data_dir = data_dir
        self.where = f"data dir {data_dir.path}"
        self.operators = OperatorFile(data_dir.path)

    def run_store(self) -> FileRunStore:
        return FileRunStore(self.data_dir.path)

    def deliveries(self, node_id: str | None = None) -> DeliveryFile:
        return DeliveryFile(self.data_dir.path)

    def event_journal(self) -> None:
        return None  # one process per data dir: its stream lives and ends with it

    def secret(self) -> bytes:
        return self.data_dir.secret()

    def available(self) -> bool:
        return True  # a disk that fails fails each write, which answers 503 itself

    def join(self, node_id: str, timeout: float, address: str | None = None) -> None:
        """Nothing to join: the data dir's lock makes this process its only node."""

    def nodes(self) -> None:
        return None

    def close(self) -> None:
        self.data_dir.close()
