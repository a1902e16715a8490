"""Logging set-up shared by the node and the client: text for people, or one JSON object
per line for log pipelines (`log_config.log_format = "json"`, `unison client --log-format
json`)."""

from __future__ import annotations

import datetime
import json
import logging
import sys

FORMATS = ("text", "json")
_TEXT = "%(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """`{"time", "level", "logger", "message"}` (+ `"exception"`), one object per line."""

    def format(self, record: logging.LogRecord) -> str:
        doc = {
            "time": datetime.datetime.fromtimestamp(record.created, datetime.UTC)
            .isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            doc["exception"] = self.formatException(record.exc_info)
        return json.dumps(doc, ensure_ascii=False)


def setup_logging(level: int | str, fmt: str = "text", timestamps: bool = True) -> None:
    """Root logging to stderr at `level` in `fmt` ("text" or "json")."""
    if isinstance(level, str):
        level = {"warn": logging.WARNING}.get(level.lower(),
                                             getattr(logging, level.upper(), logging.INFO))
    handler = logging.StreamHandler(sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter(("%(asctime)s " if timestamps else "") + _TEXT))
    logging.basicConfig(level=level, handlers=[handler], force=True)
