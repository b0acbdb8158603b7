"""Incremental chunked-body decoding: any split of the input, strict framing, bounded memory."""

from __future__ import annotations

from collections.abc import Sequence

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sidecar.http1.chunked import ChunkedDecoder
from sidecar.http1.errors import HttpParseError


def encode(
    chunks: list[bytes], *, extensions: list[str] | None = None, trailers: Sequence[str] = ()
) -> bytes:
    """A chunked body: ``extensions[i]`` (e.g. ``";a=b"``) goes on chunk i, the last one after."""
    exts = extensions or [""] * (len(chunks) + 1)
    out = b"".join(
        f"{len(c):x}{ext}\r\n".encode() + c + b"\r\n" for c, ext in zip(chunks, exts, strict=False)
    )
    out += f"0{exts[len(chunks)]}\r\n".encode()
    out += b"".join(f"{t}\r\n".encode("latin-1") for t in trailers)
    return out + b"\r\n"


def decode_all(pieces: list[bytes], decoder: ChunkedDecoder | None = None) -> tuple[bytes, int]:
    """Feed ``pieces`` until the decoder is done; returns (payload, bytes consumed)."""
    decoder = decoder or ChunkedDecoder()
    payload: list[bytes] = []
    consumed = 0
    for piece in pieces:
        out, used = decoder.feed(piece)
        payload.extend(out)
        consumed += used
        if decoder.done:
            assert used <= len(piece)
            break
        assert used == len(piece)  # not done: everything is consumed
    return b"".join(payload), consumed


def refused(*pieces: bytes, **kwargs: int) -> HttpParseError:
    decoder = ChunkedDecoder(**kwargs)
    with pytest.raises(HttpParseError) as info:
        for piece in pieces:
            decoder.feed(piece)
    assert (info.value.status, info.value.reason) == (400, "bad_chunk")
    return info.value


def test_single_chunk() -> None:
    decoder = ChunkedDecoder()
    assert not decoder.done
    assert decoder.feed(b"5\r\nhello\r\n0\r\n\r\n") == ([b"hello"], 15)
    assert decoder.done


def test_empty_body() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"0\r\n\r\n") == ([], 5)
    assert decoder.done


def test_several_chunks_in_one_feed() -> None:
    body = encode([b"hello ", b"chunked", b" world"])
    pieces, used = ChunkedDecoder().feed(body)
    assert pieces == [b"hello ", b"chunked", b" world"]
    assert used == len(body)


@pytest.mark.parametrize(
    ("data", "payload"),
    [
        (b"a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),  # lowercase hex
        (b"A\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),  # uppercase hex
        (b"0005\r\nhello\r\n0\r\n\r\n", b"hello"),  # leading zeros
        (b"000000000000000a\r\n0123456789\r\n0\r\n\r\n", b"0123456789"),  # 16 hex digits
        (b"5;name=value\r\nhello\r\n0\r\n\r\n", b"hello"),  # extension ignored
        (b'5;a;b=c;d="q s"\r\nhello\r\n0\r\n\r\n', b"hello"),
        (b"5 ;a\r\nhello\r\n0\r\n\r\n", b"hello"),  # BWS before ';'
        (b"5\t;\ta = b\r\nhello\r\n0\r\n\r\n", b"hello"),
        (b"5;caf\xe9\r\nhello\r\n0\r\n\r\n", b"hello"),  # obs-text in an extension
        (b"5\r\nhello\r\n0;last=1\r\n\r\n", b"hello"),  # extension on the last chunk
        (b"5\r\nhello\r\n000\r\n\r\n", b"hello"),
        (b"5\r\nhe\r\nl\r\n0\r\n\r\n", b"he\r\nl"),  # CRLF inside data is data
        (b"0\r\nX-Trailer: 1\r\nY: two words\r\n\r\n", b""),  # trailers dropped
        (b"3\r\nabc\r\n0\r\nX:\r\nY:\t\xe9\r\n\r\n", b"abc"),
    ],
)
def test_valid_bodies(data: bytes, payload: bytes) -> None:
    decoder = ChunkedDecoder()
    pieces, used = decoder.feed(data)
    assert (b"".join(pieces), used, decoder.done) == (payload, len(data), True)


def test_bytes_after_the_end_are_not_consumed() -> None:
    decoder = ChunkedDecoder()
    body = encode([b"abc"], trailers=["X: y"])
    pieces, used = decoder.feed(body + b"GET / HTTP/1.1\r\n")
    assert (pieces, used, decoder.done) == ([b"abc"], len(body), True)
    assert decoder.feed(b"more") == ([], 0)  # done: nothing more is consumed


def test_end_split_inside_the_data_crlf() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"5\r\nhello\r") == ([b"hello"], 9)
    assert decoder.feed(b"\n0\r\n\r\nNEXT") == ([], 6)
    assert decoder.done


def test_partial_chunk_data_is_emitted_as_it_arrives() -> None:
    decoder = ChunkedDecoder()
    assert decoder.feed(b"100000\r\n") == ([], 8)  # a 1 MiB chunk announced
    data = b"x" * 10
    pieces, used = decoder.feed(data)
    assert (pieces, used) == ([data], 10)
    assert pieces[0] is data  # the input itself, not a copy
    rest = b"y" * (0x100000 - 10)
    pieces, used = decoder.feed(rest + b"\r\n0\r\n\r\n")
    assert pieces == [rest]
    assert used == len(rest) + 7 and decoder.done


def test_every_two_piece_split() -> None:
    body = encode([b"hello", b"x" * 17, b"\r\n"], trailers=["T: 1"])
    for i in range(len(body) + 1):
        payload, used = decode_all([body[:i], body[i:] + b"extra"])
        assert (payload, used) == (b"hello" + b"x" * 17 + b"\r\n", len(body)), i


def test_byte_by_byte() -> None:
    body = encode([b"abc", b"defgh"], extensions=[";a=1", "", ";z"], trailers=["A: b", "C: d"])
    decoder = ChunkedDecoder()
    payload, used = decode_all([body[i : i + 1] for i in range(len(body))] + [b"x"], decoder)
    assert (payload, used, decoder.done) == (b"abcdefgh", len(body), True)


@pytest.mark.parametrize(
    "data",
    [
        b"\r\n",  # empty size line
        b"g\r\n",
        b"-5\r\nhello\r\n",
        b"+5\r\nhello\r\n",
        b" 5\r\nhello\r\n",
        b"5 \r\nhello\r\n",  # trailing whitespace without an extension
        b"0x5\r\nhello\r\n",
        b"5\nhello\r\n",  # bare LF
        b"5\r\r\nhello\r\n",
        b"5\rX\nhello\r\n",
        b"5;\x00\r\nhello\r\n",  # CTL in an extension
        b"5;a\rb\r\nhello\r\n",  # bare CR in an extension
        b"5;a\x7f\r\nhello\r\n",
        b"00000000000000005\r\nhello\r\n",  # 17 hex digits
        b"5\r\nhelloX",  # data not followed by CRLF
        b"5\r\nhello\n",
        b"5\r\nhello\r\r",
        b"5\r\nhello\rX",
        b"3\r\nhello\r\n",  # more data than announced
        b"5\r\nhello0\r\n\r\n",
        b"0\r\nno colon\r\n\r\n",  # malformed trailer
        b"0\r\n: v\r\n\r\n",
        b"0\r\nX : v\r\n\r\n",
        b"0\r\nX: a\r\n b\r\n\r\n",  # obs-fold in trailers
        b"0\r\nX: a\n\r\n",  # bare LF in trailers
        b"0\r\nX: a\x00\r\n\r\n",
        b"0\r\n\n",
        b"0\r\n\r\r\n",
    ],
)
def test_malformed_bodies_are_refused(data: bytes) -> None:
    refused(data)
    refused(*[data[i : i + 1] for i in range(len(data))])  # the same, a byte at a time


def test_chunk_line_limit() -> None:
    line = b"5;" + b"e" * (4096 - 4) + b"\r\n"
    assert len(line) == 4096
    payload, _ = decode_all([line + b"hello\r\n0\r\n\r\n"])
    assert payload == b"hello"
    refused(b"5;" + b"e" * (4096 - 3) + b"\r\nhello\r\n")
    assert "too long" in refused(b"5;" + b"e" * 5000).message  # no LF yet: refused anyway
    refused(*[b"5;"] + [b"e"] * 20, max_chunk_line=16)  # a line growing across feeds
    assert decode_all(
        [b"5;" + b"e" * 12 + b"\r\nhello\r\n0\r\n\r\n"], ChunkedDecoder(max_chunk_line=16)
    )


def test_trailer_limit() -> None:
    trailers = b"X: " + b"v" * 9 + b"\r\n"  # 14 bytes, + final CRLF = 16
    decoder = ChunkedDecoder(max_trailers=16)
    assert decode_all([b"0\r\n" + trailers + b"\r\n"], decoder) == (b"", 19)
    assert decoder.done
    assert "trailer" in refused(b"0\r\n" + trailers + b"Y: 1\r\n\r\n", max_trailers=16).message
    refused(b"0\r\nX: " + b"v" * 100, max_trailers=16)  # no LF yet
    refused(*[b"0\r\nX: "] + [b"v"] * 20, max_trailers=16)


def test_a_refused_decoder_stays_refused() -> None:
    decoder = ChunkedDecoder()
    with pytest.raises(HttpParseError):
        decoder.feed(b"z\r\n")
    for later in (b"\r\n", b"0\r\n\r\n", b""):
        with pytest.raises(HttpParseError) as info:
            decoder.feed(later)
        assert info.value.reason == "bad_chunk"
    assert not decoder.done


# --- properties -----------------------------------------------------------------------------------

_extension = st.sampled_from(["", ";a", ";a=b", ' ;x="y z"', ";\tq=1;r"])
_trailer = st.sampled_from(["X: 1", "Trailer-Name: some value", "E:", "Y: \xe9\t"])


@st.composite
def bodies(draw: st.DrawFn) -> tuple[list[bytes], bytes]:
    chunks = draw(st.lists(st.binary(min_size=1, max_size=64), max_size=8))
    extensions = draw(st.lists(_extension, min_size=len(chunks) + 1, max_size=len(chunks) + 1))
    trailers = draw(st.lists(_trailer, max_size=3))
    return chunks, encode(chunks, extensions=extensions, trailers=trailers)


@settings(max_examples=500)
@given(bodies(), st.lists(st.integers(min_value=0), max_size=12), st.binary(max_size=16))
def test_any_split_decodes_the_payload(
    body: tuple[list[bytes], bytes], cuts: list[int], extra: bytes
) -> None:
    chunks, encoded = body
    stream = encoded + extra
    points = sorted({c % (len(stream) + 1) for c in cuts})
    pieces = [stream[a:b] for a, b in zip([0, *points], [*points, len(stream)], strict=True)]
    decoder = ChunkedDecoder()
    payload, used = decode_all(pieces, decoder)
    assert payload == b"".join(chunks)
    assert decoder.done
    assert used == len(encoded)  # the extra bytes belong to the next message


@settings(max_examples=500)
@given(st.binary(max_size=200), st.lists(st.integers(min_value=0, max_value=200), max_size=6))
def test_arbitrary_input_only_raises_bad_chunk(data: bytes, cuts: list[int]) -> None:
    points = sorted({min(c, len(data)) for c in cuts})
    pieces = [data[a:b] for a, b in zip([0, *points], [*points, len(data)], strict=True)]
    decoder = ChunkedDecoder(max_chunk_line=64, max_trailers=64)
    total = 0
    try:
        for piece in pieces:
            out, used = decoder.feed(piece)
            assert 0 <= used <= len(piece)
            assert all(out) and sum(map(len, out)) <= used
            total += used
            if decoder.done:
                break
    except HttpParseError as err:
        assert (err.status, err.reason) == (400, "bad_chunk")
    assert total <= len(data)
