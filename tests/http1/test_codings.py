"""Content codings: which one a response declares, bounded incremental gzip/deflate decoding."""

from __future__ import annotations

import gzip
import zlib

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.http1.codings import CodingError, Decoder, content_coding, decode_all

TEXT = b'{"jsonrpc":"2.0","id":1,"result":{"tools":[' + b'{"name":"t"},' * 300 + b"{}]}}"


def raw_deflate(data: bytes) -> bytes:
    compressor = zlib.compressobj(wbits=-zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


@pytest.mark.parametrize(
    ("values", "coding"),
    [
        ([], "identity"),
        (["identity"], "identity"),
        ([""], "identity"),
        (["gzip"], "gzip"),
        (["GZip "], "gzip"),
        (["x-gzip"], "gzip"),
        (["deflate"], "deflate"),
        (["identity, gzip"], "gzip"),
        (["br"], None),
        (["zstd"], None),
        (["compress"], None),
        (["rot13"], None),
        (["gzip;q=1"], None),
        (["gzip, gzip"], None),
        (["gzip", "deflate"], None),  # two header lines: two codings stacked
        (["deflate, br"], None),
    ],
)
def test_content_coding(values: list[str], coding: str | None) -> None:
    assert content_coding(values) == coding


@pytest.mark.parametrize(
    ("coding", "encoded"),
    [
        ("gzip", gzip.compress(TEXT)),
        ("deflate", zlib.compress(TEXT)),
        ("deflate", raw_deflate(TEXT)),  # what some servers send as "deflate"
        ("gzip", gzip.compress(TEXT[:100]) + gzip.compress(TEXT[100:])),  # two members
        ("identity", TEXT),
    ],
)
def test_decode_whole_and_byte_by_byte(coding: str, encoded: bytes) -> None:
    assert decode_all(encoded, coding, len(TEXT)) == TEXT
    decoder = Decoder(coding)
    out = b"".join(decoder.decode(encoded[i : i + 1], len(TEXT)) for i in range(len(encoded)))
    decoder.finish()
    assert out == TEXT


def test_a_decompression_bomb_stops_at_the_limit() -> None:
    bomb = gzip.compress(b"\0" * (64 * 1024 * 1024))  # 64 MiB in ~64 KiB
    with pytest.raises(CodingError, match="more than 1048576 bytes"):
        decode_all(bomb, "gzip", 1024 * 1024)
    decoder = Decoder("gzip")
    with pytest.raises(CodingError):
        for start in range(0, len(bomb), 4096):  # the limit holds per call, too
            decoder.decode(bomb[start : start + 4096], 1024 * 1024)


@pytest.mark.parametrize(
    ("coding", "encoded", "why"),
    [
        ("gzip", gzip.compress(TEXT)[:-5], "truncated"),
        ("deflate", zlib.compress(TEXT)[:-3], "truncated"),
        ("deflate", b"x", "truncated"),
        ("gzip", gzip.compress(TEXT) + b"junk", "after the end"),
        ("deflate", zlib.compress(TEXT) + b"\x1f\x8b", "after the end"),
        ("gzip", b"not gzip at all", "corrupt"),
        ("gzip", TEXT, "corrupt"),
        ("deflate", b"\xff" * 20, "corrupt"),
    ],
)
def test_corrupt_or_truncated_bodies_are_errors(coding: str, encoded: bytes, why: str) -> None:
    with pytest.raises(CodingError, match=why):
        decode_all(encoded, coding, 1 << 20)


def test_unknown_codings_have_no_decoder() -> None:
    with pytest.raises(ValueError, match="br"):
        Decoder("br")


@settings(max_examples=100, deadline=None)
@given(
    st.binary(max_size=3000),
    st.sampled_from(["gzip", "deflate"]),
    st.lists(st.integers(min_value=0, max_value=3000), max_size=8),
)
def test_decoding_does_not_depend_on_chunking(data: bytes, coding: str, cuts: list[int]) -> None:
    encoded = gzip.compress(data) if coding == "gzip" else zlib.compress(data)
    points = sorted({c % (len(encoded) + 1) for c in cuts})
    decoder = Decoder(coding)
    pieces = [encoded[a:b] for a, b in zip([0, *points], [*points, len(encoded)], strict=True)]
    out = b"".join(decoder.decode(piece, len(data)) for piece in pieces)
    decoder.finish()
    assert out == data
