"""UnisonDB-style TOML node configuration, the one format every node reads.

- `model`: the dataclasses (NodeConfig and one per TOML table);
- `parse`: TOML -> validated NodeConfig (`load_config`, `parse_config`);
- `render`: NodeConfig -> TOML (`render_toml`, pure);
- `units`: sizes and durations as the TOML writes them.

Cluster planning (which nodes, which ports) is `unison.topology`, not this package.
"""

from __future__ import annotations

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

__all__ = [
    "DEFAULT_MAX_BODY_BYTES", "NAMESPACE_RE", "ConfigError", "GrpcConfig", "HttpConfig",
    "LogConfig", "NodeConfig", "NotifierConfig", "StorageConfig", "UpstreamConfig",
    "WalCleanupConfig", "WriteNotifyConfig", "format_duration", "format_size", "load_config",
    "parse_config", "parse_duration", "parse_size", "render_toml",
]
