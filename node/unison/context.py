"""What the HTTP API may see of a running node: its config, stores and the state of its
followers and notifiers. `unison.node` builds one; `unison.api` only reads it.

Its own module so the API can name the type without importing the composition root.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, Protocol

from unison.config import NodeConfig
from unison.storage import NamespaceStore


class FollowerLike(Protocol):
    def status(self) -> dict[str, Any]: ...

    @property
    def caught_up(self) -> bool: ...


class NotifierLike(Protocol):
    def metrics(self) -> dict[str, int]: ...


@dataclass
class NodeContext:
    """What the HTTP API may see of a running node."""

    config: NodeConfig
    role: str
    stores: dict[str, NamespaceStore]
    writable: frozenset[str]
    followers: dict[str, FollowerLike] = field(default_factory=dict)  # namespace -> follower
    notifiers: dict[str, NotifierLike] = field(default_factory=dict)  # namespace -> notifier
    started_at: float = field(default_factory=time.time)

    def ready(self) -> tuple[bool, list[str]]:
        """(ready?, reasons it is not)."""
        reasons = [f"namespace {ns}: storage closed" for ns, s in self.stores.items() if s.closed]
        reasons += [s.failed for s in self.stores.values() if s.failed is not None]
        reasons += [s.stalled for s in self.stores.values() if s.stalled is not None]
        for ns, f in self.followers.items():
            st = f.status()  # one snapshot, so the verdict and its reason agree
            if not st.get("caught_up", f.caught_up):
                reason = (st.get("not_ready_reason")
                          or f"follower not caught up with {st.get('upstream', 'upstream')}")
                reasons.append(f"namespace {ns}: {reason}")
        return not reasons, reasons
