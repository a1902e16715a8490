"""Change notifications: one ZeroMQ publisher per namespace, in UnisonDB's wire format."""

from unison.notify.message import encode_notification, topic

__all__ = ["encode_notification", "topic"]
