"""Durable per-namespace storage on RocksDB: data and an ordered, checksummed log."""

from unison.storage.engine import LogTrimmed, Mutation, NamespaceStore, OutOfOrder, StoreClosed
from unison.storage.records import CorruptRecord, Op, Record

__all__ = ["CorruptRecord", "LogTrimmed", "Mutation", "NamespaceStore", "Op", "OutOfOrder",
           "Record", "StoreClosed"]
