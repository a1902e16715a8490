"""`unison curve-keypair DIR NAME`: a ZeroMQ CURVE certificate pair for the notifiers.

Writes `DIR/NAME.key` (the public certificate: give it to the other side) and
`DIR/NAME.key_secret` (public and secret key, mode 0600: keep it), in ZeroMQ's Z85
certificate format, which `zmq.auth.load_certificate` and the node and client read.
Existing files are never overwritten.
"""

from __future__ import annotations

import argparse
import os
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

import zmq

_HEADER = """\
#   ZeroMQ CURVE {kind} certificate, made by `unison curve-keypair` on {when}
#   {note}

metadata
    name = "{name}"
curve
    public-key = "{public}"
"""
_PUBLIC_NOTE = "Public: give it to the peers that must know this key."
_SECRET_NOTE = "SECRET: keep it private (mode 0600); the public half is NAME.key."


def _write(path: Path, text: str, mode: int) -> None:
    # O_EXCL: a key pair in use is never replaced by accident; the mode is set at creation
    # so the secret is never readable by others, not even for a moment.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def make_keypair(directory: Path, name: str) -> tuple[Path, Path, str]:
    """Write NAME.key and NAME.key_secret; (public file, secret file, public key)."""
    public, secret = (k.decode() for k in zmq.curve_keypair())
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
    fields = {"when": when, "name": name, "public": public}
    pub_file, sec_file = directory / f"{name}.key", directory / f"{name}.key_secret"
    for p in (pub_file, sec_file):
        if p.exists():
            raise FileExistsError(f"{p} exists; remove it or choose another NAME")
    _write(sec_file, _HEADER.format(kind="secret", note=_SECRET_NOTE, **fields)
           + f'    secret-key = "{secret}"\n', 0o600)
    _write(pub_file, _HEADER.format(kind="public", note=_PUBLIC_NOTE, **fields), 0o644)
    return pub_file, sec_file, public


def _say(text: str, stream: TextIO) -> None:
    stream.write(text + "\n")  # a CLI's own output, not a log line


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="unison curve-keypair",
        description="Make a ZeroMQ CURVE certificate pair: DIR/NAME.key (public) and "
        "DIR/NAME.key_secret (secret, mode 0600). A notifier uses its NAME.key_secret as "
        "notifier_config.<ns>.curve_secret_key_file; clients get its NAME.key "
        "(unison client --curve-server-key). A client's NAME.key goes into the node's "
        "curve_authorized_keys_dir, its NAME.key_secret to unison client --curve-cert.")
    p.add_argument("directory", metavar="DIR", help="where to write the files (created)")
    p.add_argument("name", metavar="NAME", help="file name without extension, e.g. relayer")
    args = p.parse_args(argv)
    if not zmq.has("curve"):
        _say("unison curve-keypair: this libzmq has no CURVE support", sys.stderr)
        return 1
    if not args.name or "/" in args.name or args.name.startswith("."):
        _say(f"unison curve-keypair: NAME {args.name!r} must be a plain file name "
             "(no '/', not starting with '.')", sys.stderr)
        return 2
    directory = Path(args.directory)
    try:
        directory.mkdir(parents=True, exist_ok=True)
        pub_file, sec_file, public = make_keypair(directory, args.name)
    except OSError as e:
        _say(f"unison curve-keypair: {e}", sys.stderr)
        return 1
    _say(f"public certificate: {pub_file}\nsecret certificate: {sec_file}\n"
         f"public key: {public}", sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
