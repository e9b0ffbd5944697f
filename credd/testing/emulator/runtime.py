"""Everything a request handler may touch, in one place.

Handlers of every service get the same :class:`Runtime`: the injected clock
(every notion of "now", so ``ManualClock`` can expire anything), the live
configuration, the directory, the issued state, the fault plan and the call
counters.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from datetime import datetime, timedelta

from credd.clock import Clock

from .config import Directory, EmulatorConfig
from .faults import FaultPlan
from .state import State


@dataclass
class Runtime:
    clock: Clock
    config: EmulatorConfig
    directory: Directory
    faults: FaultPlan = field(default_factory=FaultPlan)
    state: State = field(default_factory=State)
    #: requests that reached each operation, faulted ones included
    calls: Counter[str] = field(default_factory=Counter)
    #: requests of each operation being answered now (a fault's latency included)
    in_flight: Counter[str] = field(default_factory=Counter)
    #: the most requests of each operation that were ever in flight at once
    peak_in_flight: Counter[str] = field(default_factory=Counter)

    def now(self) -> datetime:
        return self.clock.now()

    def in_seconds(self, seconds: int) -> datetime:
        return self.clock.now() + timedelta(seconds=seconds)
