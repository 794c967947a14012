"""The node's log: lines for people, or one JSON object per event for a log pipeline.

`[log] format = "json"` writes each record as one line of JSON: `time` (RFC 3339, UTC),
`level`, `logger`, `node`, `message`, and `error` with the traceback when there is one.
What the node logs names messages by id, countries and reasons; never a body, a token
or a key (those are not passed to the logger anywhere).
"""

from __future__ import annotations

import datetime
import json
import logging
import sys

__all__ = ["JsonFormatter", "configure_logging"]

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class JsonFormatter(logging.Formatter):
    """One record, one line of JSON."""

    def __init__(self, node: str) -> None:
        super().__init__()
        self.node = node

    def format(self, record: logging.LogRecord) -> str:
        when = datetime.datetime.fromtimestamp(record.created, datetime.UTC)
        line = {
            "time": when.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "level": record.levelname.lower(),
            "logger": record.name,
            "node": self.node,
            "message": record.getMessage(),
        }
        if record.exc_info:
            line["error"] = self.formatException(record.exc_info)
        return json.dumps(line, ensure_ascii=False)


def configure_logging(log_format: str, node: str) -> None:
    """The root logger at INFO, to stderr, in `log_format` ("text" or "json")."""
    handler = logging.StreamHandler(sys.stderr)
    formatter = JsonFormatter(node) if log_format == "json" else logging.Formatter(TEXT_FORMAT)
    handler.setFormatter(formatter)
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
