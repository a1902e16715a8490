"""`unison client`: the CRDT client program (see `unison client --help`).

Options are parsed before the asyncio/ZeroMQ/aiohttp machinery is imported, so usage
errors and --help answer at once.
"""

from __future__ import annotations

import logging
import sys

from unison.client.options import UsageError, parse_options
from unison.logs import setup_logging


def main(argv: list[str]) -> int:
    try:
        opts = parse_options(argv)
    except UsageError as exc:
        print(f"unison client: error: {exc}", file=sys.stderr)
        return 2
    setup_logging(opts.log_level, opts.log_format)
    # aiohttp's access log and zmq's debug chatter are not what a user watches here
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    from unison import eventloop

    try:
        choice = eventloop.choice_from_env()
    except ValueError as exc:
        print(f"unison client: error: {exc}", file=sys.stderr)
        return 2
    try:
        from unison.client.app import run

        return eventloop.run(run(opts), choice, program="unison client")
    except eventloop.LoopUnavailable as exc:
        print(f"unison client: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
