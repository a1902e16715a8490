"""UnisonDB-style TOML node configuration, the one format every node reads.

- `model`: the dataclasses (NodeConfig and one per TOML table);
- `parse`: TOML -> validated NodeConfig (`load_config`, `parse_config`);
- `render`: NodeConfig -> TOML (`render_toml`, pure);
- `units`: sizes and durations as the TOML writes them.

Cluster planning (which nodes, which ports) is `unison.topology`; the planning names are
still answered here for older imports, loaded only when asked for.
"""

from __future__ import annotations

from typing import Any

from unison.config.model import (
    DEFAULT_MAX_BODY_BYTES,
    NAMESPACE_RE,
    GrpcConfig,
    HttpConfig,
    LogConfig,
    NodeConfig,
    NotifierConfig,
    StorageConfig,
    UpstreamConfig,
    WalCleanupConfig,
    WriteNotifyConfig,
)
from unison.config.parse import load_config, parse_config
from unison.config.render import render_toml
from unison.config.units import format_duration, format_size, parse_duration, parse_size
from unison.errors import ConfigError

_PLANNING = frozenset({
    "GRPC_BASE_PORT", "HTTP_BASE_PORT", "NOTIFIER_BASE_PORT", "RELAYER_NAME", "NodePlan",
    "PortAllocation", "allocation_of", "node_ports", "plan_cluster",
})


def __getattr__(name: str) -> Any:
    # Lazily, so that importing unison.config never imports unison.topology.
    if name in _PLANNING:
        from unison.topology import plan

        return getattr(plan, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DEFAULT_MAX_BODY_BYTES", "NAMESPACE_RE", "ConfigError", "GrpcConfig", "HttpConfig",
    "LogConfig", "NodeConfig", "NotifierConfig", "StorageConfig", "UpstreamConfig",
    "WalCleanupConfig", "WriteNotifyConfig", "format_duration", "format_size", "load_config",
    "parse_config", "parse_duration", "parse_size", "render_toml",
]
