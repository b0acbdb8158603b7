"""Every use of a private or undocumented API of Python or of a library, in one place.

Each function names what it reaches into, why no public API does the job, and what replaces it
once one does. Nothing else in ``sidecar`` may touch another package's private names (a review
with ``grep -rn "\\._[a-z]" sidecar`` finds only this module and our own classes' attributes).
Tested on both event loops we run on, asyncio's and uvloop's: ``tests/test_compat.py``.
"""

from __future__ import annotations

import asyncio
import json
import ssl
import sys
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import jwt


def server_tls_protocol(
    loop: asyncio.AbstractEventLoop,
    app_protocol: asyncio.Protocol,
    context: ssl.SSLContext,
    waiter: asyncio.Future[None],
    *,
    handshake_timeout: float,
) -> Any:
    """A server-side TLS layer to put under ``app_protocol`` *synchronously*, in the accepted
    transport's ``connection_made``: ``transport.set_protocol(layer); layer.connection_made(
    transport)``; ``waiter`` completes when the handshake did (or fails with its error).

    The public ``loop.start_tls`` builds the same object, but it is a coroutine: uvloop starts
    reading right after ``connection_made`` returns, and a ClientHello arriving before the
    coroutine's first step would be taken for application data. The class is asyncio's
    ``asyncio.sslproto.SSLProtocol`` (an undocumented module) or uvloop's ``SSLProtocol`` (not
    exported by ``uvloop``); both take the constructor arguments ``start_tls`` passes.
    """
    if type(loop).__module__.startswith("uvloop"):
        import uvloop.loop

        cls: Any = getattr(uvloop.loop, "SSLProtocol")  # noqa: B009 - absent from its stubs
    else:
        import asyncio.sslproto

        cls = asyncio.sslproto.SSLProtocol
    return cls(
        loop,
        app_protocol,
        context,
        waiter,
        server_side=True,
        server_hostname=None,
        call_connection_made=False,
        ssl_handshake_timeout=handshake_timeout,
    )


def tls_app_transport(layer: Any) -> asyncio.Transport:
    """The application-side transport of a layer made by ``server_tls_protocol``, once its
    handshake is done: the private ``_get_app_transport()``, which is what ``start_tls`` returns
    (both loops)."""
    transport: asyncio.Transport = layer._get_app_transport()
    return transport


if sys.version_info >= (3, 13):  # pragma: no cover - CI runs 3.11

    def unverified_chain_der(ssl_object: Any) -> list[bytes]:
        """DER chain the peer sent, leaf first (public since Python 3.13); ``[]`` if none."""
        return list(ssl_object.get_unverified_chain() or [])

else:
    _ENCODING_DER: int = getattr(ssl, "_ssl").ENCODING_DER  # noqa: B009 - private module

    def unverified_chain_der(ssl_object: Any) -> list[bytes]:
        """DER chain the peer sent, leaf first, ``[]`` if none. Python 3.11/3.12 have it only on
        the private ``SSLObject._sslobj.get_unverified_chain()`` (certificate objects, encoded
        with the private ``_ssl.ENCODING_DER``); 3.13 made ``get_unverified_chain()`` public."""
        inner = getattr(ssl_object, "_sslobj", ssl_object)
        getter = getattr(inner, "get_unverified_chain", None)
        chain = getter() if getter is not None else None
        return [c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER) for c in chain or ()]


def jwk_as_given(key: jwt.PyJWK) -> Mapping[str, Any]:
    """The JWK a ``PyJWK`` was built from (to read its declared ``alg``): PyJWT keeps it in the
    private ``_jwk_data`` and has no public accessor; ``{}`` if a release drops it (then no
    declared ``alg`` is checked, the algorithm is still pinned by the key type)."""
    data = getattr(key, "_jwk_data", None)
    return data if isinstance(data, Mapping) else {}


def compact_ascii_json_encoder() -> Callable[[Any], str]:
    """``json.dumps(value, separators=(",", ":"), ensure_ascii=True, allow_nan=False,
    default=str)``, with the C encoder built once instead of on every call, as ``dumps`` does
    whenever it is given options. ``json.encoder.c_make_encoder`` is undocumented; without it
    (another interpreter) the documented ``JSONEncoder`` does the same, slower. No
    circular-reference check: meant for flat records."""
    make = getattr(json.encoder, "c_make_encoder", None)
    if make is None:  # pragma: no cover - CPython without the _json accelerator
        encoder = json.JSONEncoder(
            separators=(",", ":"), ensure_ascii=True, allow_nan=False, default=str
        )
        return encoder.encode
    iterencode = make(
        None, str, json.encoder.encode_basestring_ascii, None, ":", ",", False, False, False
    )
    return lambda value: "".join(iterencode(value, 0))
