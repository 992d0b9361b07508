"""What every actor of the engine shares: the store, the index, the timers, the
workflow definitions, the integrations (services), the event loop, and the
node it runs on."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from userflow.actors.definitions import Definitions
from userflow.actors.index import RunIndex
from userflow.actors.timers import TimerQueue
from userflow.storage import RunStore


@dataclass
class EngineParts:
    store: RunStore
    index: RunIndex
    timers: TimerQueue
    workflows: Definitions
    services: Any = None
    loop: asyncio.AbstractEventLoop | None = None
    node_id: str = ""  # named in every attempt and timeline entry
    shared: bool = False  # other nodes execute runs of the same store: what is not live here is theirs to change
