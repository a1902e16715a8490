"""The WAL sync helper process (see wal_sync.py): `python -I wal_sync_helper.py DIR FD`.

Standard library only and nothing else imported, so it starts fast and stays small. Per
request byte on the socket FD it `fdatasync`s every live `*.log` file in DIR (and DIR
itself when a new log appeared), then answers OK, or ERROR + message + newline (one
answer per request byte; requests read together share one round of syncs). It exits
when the node's end of the socket closes, including when the node is killed. The entries
naming DIR and the directories above it were synced when the store opened
(layout.sync_ancestors), before this helper starts.
"""

import os
import signal
import socket
import sys

REQUEST = b"s"
OK = b"\x00"
ERROR = b"E"  # followed by a message and b"\n"


def serve(directory: str, sock: socket.socket) -> None:
    """Answer sync requests until the node closes its end."""
    dir_fd = -1
    logs: dict[str, int] = {}  # live WAL file name -> our read-only descriptor
    while True:
        request = sock.recv(64)
        if not request:
            return  # the node closed its end, or died
        try:
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
            # One answer per request byte, as for OK: the node pairs them in order.
            answer = (ERROR + str(e).replace("\n", " ").encode() + b"\n") * len(request)
        sock.sendall(answer)


if __name__ == "__main__":
    # Ctrl-C (and a supervisor's SIGTERM to the process group) reach us too; the node
    # drains its writes, which may still need us, and then closes our socket: that is
    # when we stop. A node killed outright closes it as well.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        serve(sys.argv[1], socket.socket(fileno=int(sys.argv[2])))
    except (ConnectionError, KeyboardInterrupt):
        # The node was killed mid-request (reset, broken pipe): nothing to answer, and
        # nothing to say on the node's stderr; the WAL is RocksDB's to recover.
        sys.exit(0)
