"""Unison: a multi-datacenter CRDT database (UnisonDB-compatible) in Python."""

__version__ = "0.1.0"
