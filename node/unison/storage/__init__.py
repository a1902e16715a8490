"""Durable per-namespace storage on RocksDB: data and an ordered, checksummed log."""

from unison.storage.cursor import Commit, CommittedBatch, CursorLimits, Heartbeat, LogCursor
from unison.storage.engine import NamespaceStore
from unison.storage.errors import LogTrimmed, OutOfOrder, StoreClosed, WriteUnavailable
from unison.storage.records import CorruptRecord, Op, Record
from unison.storage.writer import Merger, Mutation

__all__ = ["Commit", "CommittedBatch", "CorruptRecord", "CursorLimits",
           "Heartbeat", "LogCursor", "LogTrimmed",
           "Merger", "Mutation", "NamespaceStore", "Op", "OutOfOrder", "Record", "StoreClosed",
           "WriteUnavailable"]
