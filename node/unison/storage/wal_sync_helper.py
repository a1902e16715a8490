"""The WAL sync helper process (see wal_sync.py): `python -I wal_sync_helper.py DIR FD`.

Standard library only and nothing else imported, so it starts fast and stays small. At
start it `fsync`s every directory above DIR (so the entries naming a new database
directory are durable before anything is acknowledged). Per request byte on the socket
FD it `fdatasync`s every live `*.log` file in DIR (and DIR itself when a new log
appeared), then answers OK, or ERROR + message + newline. It exits when the node's end
of the socket closes, including when the node is killed.
"""

import os
import signal
import socket
import sys

REQUEST = b"s"
OK = b"\x00"
ERROR = b"E"  # followed by a message and b"\n"


def sync_ancestors(directory: str) -> None:
    """fsync the directories above `directory`: the node creates the namespace directory
    (and base_dir) itself, and RocksDB never syncs the entry that names its database
    directory, so without this a power cut can take a fresh namespace away whole. Stops
    at the filesystem's root (a mount point's own entry predates the node) and at a
    directory it may not read (the node did not make that one, nor any above it)."""
    path = os.path.realpath(directory)
    dev = os.stat(path).st_dev
    while (parent := os.path.dirname(path)) != path and os.stat(parent).st_dev == dev:
        try:
            fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY)
        except PermissionError:
            return
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        path = parent


def serve(directory: str, sock: socket.socket, broken: OSError | None = None) -> None:
    """Answer sync requests; with `broken`, every one with that error."""
    dir_fd = -1
    logs: dict[str, int] = {}  # live WAL file name -> our read-only descriptor
    while True:
        request = sock.recv(64)
        if not request:
            return  # the node closed its end, or died
        try:
            if broken is not None:
                raise broken
            names = {e.name for e in os.scandir(directory) if e.name.endswith(".log")}
            if dir_fd < 0:
                dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
            appeared = False
            for name in names - logs.keys():
                try:
                    logs[name] = os.open(os.path.join(directory, name), os.O_RDONLY)
                    appeared = True
                except FileNotFoundError:  # obsolete and deleted since the scan
                    pass
            for name in logs.keys() - names:
                os.close(logs.pop(name))
            for fd in logs.values():
                os.fdatasync(fd)
            if appeared:
                os.fsync(dir_fd)
            answer = OK * len(request)
        except OSError as e:
            answer = ERROR + str(e).replace("\n", " ").encode() + b"\n"
        sock.sendall(answer)


def main(directory: str, sock: socket.socket) -> None:
    broken = None
    try:
        sync_ancestors(directory)  # before the first answer: nothing is acknowledged yet
    except OSError as e:
        broken = OSError(f"fsync of the directories above {directory} failed: {e}")
    serve(directory, sock, broken)


if __name__ == "__main__":
    # Ctrl-C (and a supervisor's SIGTERM to the process group) reach us too; the node
    # drains its writes, which may still need us, and then closes our socket: that is
    # when we stop. A node killed outright closes it as well.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        main(sys.argv[1], socket.socket(fileno=int(sys.argv[2])))
    except (ConnectionError, KeyboardInterrupt):
        # The node was killed mid-request (reset, broken pipe): nothing to answer, and
        # nothing to say on the node's stderr; the WAL is RocksDB's to recover.
        sys.exit(0)
