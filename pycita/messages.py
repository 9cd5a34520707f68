"""Envelope codec for the bus: every body is a protobuf ``pycita.Message``.

Routing keys are ``<sender>.<msg_type>`` where ``msg_type`` is the name of the
``content`` field set in the envelope. :func:`unpack` refuses a body whose
content disagrees with its routing key, so a handler can dispatch on the
routing key alone.
"""

from __future__ import annotations

import time
from typing import Any

from google.protobuf.message import DecodeError as _PbDecodeError
from google.protobuf.message import Message as _PbMessage

from pycita.errors import DecodeError
from pycita.proto import cita_pb2 as pb

__all__ = ["pb", "pack", "unpack", "msg_type_of", "routing_key"]


def routing_key(sender: str, msg_type: str) -> str:
    return f"{sender}.{msg_type}"


def msg_type_of(key: str) -> str:
    """The ``msg_type`` part of a routing key."""
    _, _, msg_type = key.partition(".")
    return msg_type


def pack(sender: str, msg_type: str, content: _PbMessage, request_id: str = "") -> tuple[str, bytes]:
    """Wrap ``content`` in an envelope; returns ``(routing_key, body)``."""
    env = pb.Message(request_id=request_id, origin=sender, timestamp_ms=int(time.time() * 1000))
    field = getattr(env, msg_type)  # AttributeError for an unknown type: a programming error
    field.CopyFrom(content)
    return routing_key(sender, msg_type), env.SerializeToString()


def unpack(key: str, body: bytes) -> pb.Message:
    """Decode an envelope and check it carries the type its routing key names.

    Raises :class:`DecodeError` (which the bus dead-letters) on anything else.
    """
    env = pb.Message()
    try:
        env.ParseFromString(body)
    except (_PbDecodeError, ValueError, RuntimeError) as exc:
        raise DecodeError(f"message {key!r}", f"not a pycita.Message protobuf: {exc}") from exc
    content = env.WhichOneof("content")
    if content is None:
        raise DecodeError(f"message {key!r}", "envelope has no content")
    expected = msg_type_of(key)
    if content != expected:
        raise DecodeError(f"message {key!r}", f"envelope carries {content!r}, routing key says {expected!r}")
    return env


def content_of(env: pb.Message) -> Any:
    """The message inside an envelope."""
    name = env.WhichOneof("content")
    if name is None:
        raise DecodeError("message", "envelope has no content")
    return getattr(env, name)
