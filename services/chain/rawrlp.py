"""Zero-decode RLP helpers: split a list into its encoded items, join items into a list.

The chain stores bodies and receipts exactly as received; it only needs the
byte ranges of the items (to hash transactions, index them and rebuild full
blocks), never the decoded objects.
"""

from __future__ import annotations

from collections.abc import Sequence

from rlp.codec import consume_length_prefix, length_prefix
from rlp.exceptions import DecodingError

from pycita.errors import DecodeError

LIST_OFFSET = 0xC0


def split_list(data: bytes, what: str) -> list[bytes]:
    """The encoded items of the RLP list ``data`` (which must be exactly one list).

    Raises :class:`DecodeError` naming ``what`` when ``data`` is not a well-formed list.
    """
    try:
        _prefix, kind, length, start = consume_length_prefix(data, 0)
    except (DecodingError, IndexError) as exc:
        raise DecodeError(what, f"bad RLP prefix: {exc}") from exc
    if kind is not list:
        raise DecodeError(what, "expected an RLP list, got a string")
    end = start + length
    if end != len(data):
        raise DecodeError(what, f"RLP list claims {length} payload bytes, {len(data) - start} present")
    items: list[bytes] = []
    pos = start
    while pos < end:
        try:
            _p, _k, item_len, item_start = consume_length_prefix(data, pos)
        except (DecodingError, IndexError) as exc:
            raise DecodeError(what, f"bad RLP item at byte {pos}: {exc}") from exc
        nxt = item_start + item_len
        if nxt > end:
            raise DecodeError(what, f"RLP item at byte {pos} runs past the end of its list")
        items.append(data[pos:nxt])
        pos = nxt
    return items


def join_list(items: Sequence[bytes]) -> bytes:
    """The RLP list whose encoded items are ``items`` (the inverse of :func:`split_list`)."""
    payload = b"".join(items)
    return bytes(length_prefix(len(payload), LIST_OFFSET)) + payload


def leading_strings(data: bytes, count: int, what: str) -> list[bytes]:
    """The payloads of the first ``count`` items of the RLP list ``data``, which must be strings.

    Reads only as far as needed (no decoding of the rest of the list).
    """
    try:
        _prefix, kind, length, pos = consume_length_prefix(data, 0)
        if kind is not list or pos + length != len(data):
            raise DecodeError(what, "expected exactly one RLP list")
        end = pos + length
        out: list[bytes] = []
        while len(out) < count:
            if pos >= end:
                raise DecodeError(what, f"list has fewer than {count} items")
            _p, item_kind, item_len, start = consume_length_prefix(data, pos)
            if item_kind is not bytes:
                raise DecodeError(what, f"item {len(out)} is a list, expected a string")
            pos = start + item_len
            if pos > end:
                raise DecodeError(what, f"item {len(out)} runs past the end of the list")
            out.append(data[start:pos])
        return out
    except (DecodingError, IndexError) as exc:
        raise DecodeError(what, f"bad RLP: {exc}") from exc
