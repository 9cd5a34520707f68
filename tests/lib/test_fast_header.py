"""The fast header decoding (:func:`pycita.types.header_from_fields`, :func:`decode_header_rlp`) against pyrlp."""

from __future__ import annotations

import rlp
from hypothesis import given, settings
from hypothesis import strategies as st

from pycita.errors import DecodeError
from pycita.types import Header, decode_as, decode_header_rlp, header_from_fields

ints = st.integers(0, 2**80)
headers = st.builds(
    Header,
    st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32), st.binary(min_size=32, max_size=32),
    st.binary(min_size=32, max_size=32), st.binary(min_size=256, max_size=256), ints, ints, ints, ints, ints,
    st.binary(max_size=300), st.binary(min_size=20, max_size=20),
)


@settings(max_examples=200, deadline=None)
@given(headers)
def test_a_fast_decoded_header_equals_pyrlps_and_encodes_to_the_same_bytes(header: Header) -> None:
    raw = rlp.encode(header)
    fast = decode_header_rlp(raw, "h")
    assert fast == rlp.decode(raw, Header)
    assert [getattr(fast, name) for name, _ in Header._meta.fields] == list(header)
    assert rlp.encode(fast) == raw
    assert fast.hash == header.hash


@settings(max_examples=300, deadline=None)
@given(headers, st.integers(0, 11), st.sampled_from([b"", b"\x00", b"\x00\x01", b"x" * 31, b"x" * 33, [b"a"]]))
def test_a_header_with_a_bad_field_is_refused_as_pyrlp_refuses_it(header: Header, index: int, bad: object) -> None:
    """(decode_as turns pyrlp's TypeError for a list in an integer field into DecodeError too)"""
    fields = rlp.decode(rlp.encode(header))
    fields[index] = bad
    raw = rlp.encode(fields)
    try:
        expected: object = decode_as(raw, Header, "h")
    except DecodeError as exc:
        expected = exc
    fast = header_from_fields(fields, raw)
    if isinstance(expected, DecodeError):
        assert fast is None
        try:
            decode_header_rlp(raw, "h")
        except DecodeError as exc:
            assert str(exc) == str(expected)
        else:
            raise AssertionError("decode_header_rlp accepted what pyrlp refuses")
    else:
        assert decode_header_rlp(raw, "h") == expected
        assert fast is None or fast == expected


def test_header_from_fields_leaves_other_shapes_to_pyrlp() -> None:
    assert header_from_fields(b"not a list", b"") is None
    assert header_from_fields([b""] * 11, b"") is None
    assert header_from_fields([b""] * 13, b"") is None
