"""How a namespace lies in its RocksDB database: column families, meta keys, options."""

from __future__ import annotations

import os
import struct

from rocksdict import Options

DATA_CF = "data"
# Live data is in one of these; a snapshot is installed by building it in the other and
# switching (snapshot.py). META_DATA_CF names the live one (absent: "data").
DATA_CFS = (DATA_CF, "data_b")
META_DATA_CF = b"data_cf"
LOG_CF = "log"
# Meta keys live in the default column family.
META_LAST_LSN = b"last_lsn"
META_FIRST_LSN = b"first_lsn"
META_SNAPSHOT_PENDING = b"snapshot_pending"
# The history identity (history.py), JSON; written when the log is created.
META_HISTORY = b"history"
# Set while the history was taken from an upstream (a follower's copy); see claim_history.
META_HISTORY_ADOPTED = b"history_adopted"
# Set (synced) while the store is open, to the durability mode it was opened in
# (OPEN_SYNCED or OPEN_INTERVAL); deleted (synced) by a clean close. Found at open with
# OPEN_INTERVAL, the last run was killed or lost power in interval mode: acknowledged
# writes may be gone, so a writable store starts a new epoch (engine.claim_history).
META_OPEN = b"open_mode"
OPEN_SYNCED = b"synced"
OPEN_INTERVAL = b"interval"
# User keys arrive as UTF-8, which never contains 0xff: this bounds "every key".
KEY_SPACE_END = b"\xff"
U64 = struct.Struct(">Q")
# A test knob (bytes): a small write buffer makes RocksDB flush memtables, switch WAL
# files and compact often, so the power-loss tests (tests/power) can cut during those.
WRITE_BUFFER_ENV = "UNISON_ROCKSDB_WRITE_BUFFER_SIZE"


def options(bytes_per_sync: int = 0) -> Options:
    # No wal_dir: the WAL sync helper looks for the WAL in the database directory.
    opts = Options(raw_mode=True)
    opts.create_if_missing(True)
    opts.create_missing_column_families(True)
    if bytes_per_sync:
        # storage_config.bytes_per_sync: RocksDB syncs SST files incrementally every this
        # many bytes, so a flush or compaction does not end in one large fsync. (The WAL
        # is synced on every commit anyway.)
        opts.set_bytes_per_sync(bytes_per_sync)
    if size := int(os.environ.get(WRITE_BUFFER_ENV) or 0):
        opts.set_write_buffer_size(size)
    return opts


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
