"""Embedded dev SPIFFE Workload API: the local/test stand-in for a SPIRE agent. NOT for production.

It serves the real Workload API protocol (gRPC service ``SpiffeWorkloadAPI``, the same messages
and error codes as SPIRE, readable by py-spiffe's ``WorkloadApiClient``) from a small on-disk dev
CA, so the demo and the tests need no SPIRE deployment. There is no attestation beyond "who can
connect to which socket": each socket serves exactly one SPIFFE ID, and anyone who can open it
gets that identity's private key. Bind unix sockets in private directories or loopback TCP only.

Behaviour: X509-SVIDs (fresh P-256 key, new serial) are pushed on every open stream at half of
their lifetime and whenever a bundle changes; JWT-SVIDs are signed on request; federated dev CAs
(``--federate-with DIR=TRUST_DOMAIN``, created if missing) appear as federated bundles.

Example:
  mcp-sidecar dev-workload-api --trust-domain example.org \\
      --socket /tmp/spire/agent.sock=spiffe://example.org/ns/agents/sa/agent \\
      --socket tcp://127.0.0.1:0=spiffe://example.org/ns/mcp/sa/math
Prints "ready <endpoint-url> <spiffe-id>" per socket, then serves until SIGINT/SIGTERM.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import contextlib
import datetime as dt
import ipaddress
import logging
import math
import os
import signal
import socket
import stat
import sys
import time
from collections.abc import AsyncIterator, Iterable, Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from types import TracebackType
from typing import Any, Literal
from urllib.parse import urlsplit

import grpc
import grpc.aio
import jwt
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from google.protobuf import struct_pb2

from sidecar.dev.devca import JWT_ALGS, DevCA, DevCAError, JwtPublicKey
from sidecar.errors import SidecarError
from sidecar.identity.proto import workload_pb2, workload_pb2_grpc
from sidecar.identity.snapshot import X509Svid
from sidecar.spiffe.ids import SpiffeId, SpiffeIdError, validate_trust_domain

log = logging.getLogger(__name__)

HEADER_KEY = "workload.spiffe.io"
HEADER_VALUE = "true"
DEFAULT_STATE_DIR = Path(".dev-workload-api")
DEFAULT_X509_TTL = dt.timedelta(hours=1)
DEFAULT_JWT_TTL = dt.timedelta(minutes=5)
MAX_UNIX_PATH_BYTES = 107  # sun_path is 108 bytes including the terminating NUL
MIN_ROTATION_INTERVAL = 0.25  # seconds: a CA about to expire must not turn rotation into a spin
JWT_SVID_ALGS = frozenset(
    {"RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "PS384", "PS512"}
)

Context = grpc.aio.ServicerContext[Any, Any]


class DevServerError(SidecarError):
    """The dev Workload API cannot be configured or started as asked."""

    status = 500
    reason = "dev_workload_api_error"


# ------------------------------------------------------------------------------------ endpoints


@dataclass(frozen=True, slots=True)
class Endpoint:
    """Where one identity is served: a unix socket ``path`` or a loopback ``host``:``port``."""

    kind: Literal["unix", "tcp"]
    path: str = ""
    host: str = ""
    port: int = 0

    @property
    def url(self) -> str:
        """The ``SPIFFE_ENDPOINT_SOCKET`` value for this endpoint."""
        if self.kind == "unix":
            return f"unix://{self.path}"
        return f"tcp://{_host_port(self.host, self.port)}"

    @property
    def bind_address(self) -> str:
        return f"unix:{self.path}" if self.kind == "unix" else _host_port(self.host, self.port)


def parse_endpoint(text: str) -> Endpoint:
    """Parse ``/abs/path``, ``unix:///abs/path`` or ``tcp://IP:PORT`` (loopback IP, port 0 allowed).

    TCP is refused on non-loopback addresses: whoever connects receives a private key.
    """
    if text.startswith("/"):
        return _unix_endpoint(text, text)
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as exc:
        raise DevServerError(f"{text!r} is not a valid endpoint: {exc}") from exc
    if url.query or url.fragment or url.username or url.password:
        raise DevServerError(f"{text!r}: query, fragment and userinfo are not allowed")
    if url.scheme == "unix":
        if url.netloc or not url.path.startswith("/"):
            raise DevServerError(f"{text!r}: expected unix:///absolute/path")
        return _unix_endpoint(url.path, text)
    if url.scheme == "tcp":
        if url.path not in ("", "/") or port is None or not url.hostname:
            raise DevServerError(f"{text!r}: expected tcp://IP:PORT")
        try:
            ip = ipaddress.ip_address(url.hostname)
        except ValueError as exc:
            raise DevServerError(f"{text!r}: the tcp host must be an IP address") from exc
        if not ip.is_loopback:
            raise DevServerError(
                f"{text!r}: the dev Workload API only listens on loopback addresses"
            )
        return Endpoint("tcp", host=str(ip), port=port)
    raise DevServerError(f"{text!r}: expected /abs/path, unix:///abs/path or tcp://IP:PORT")


def _unix_endpoint(path: str, text: str) -> Endpoint:
    if "\x00" in path:
        raise DevServerError(f"{text!r}: NUL byte in path")
    path = os.path.normpath(path)
    if len(os.fsencode(path)) > MAX_UNIX_PATH_BYTES:
        raise DevServerError(
            f"{text!r}: unix socket paths are limited to {MAX_UNIX_PATH_BYTES} bytes"
        )
    return Endpoint("unix", path=path)


def _host_port(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


# ------------------------------------------------------------------------------------ state


@dataclass(frozen=True, slots=True)
class _IssuedSvid:
    svid: X509Svid
    chain_der: bytes
    key_der: bytes
    rotate_at: float  # time.monotonic() value: half of the SVID's lifetime from issuance


class _Changes:
    """A broadcast "something changed" signal: waiters grab ``current()`` and wait on it."""

    def __init__(self) -> None:
        self._event = asyncio.Event()

    def current(self) -> asyncio.Event:
        return self._event

    def notify(self) -> None:
        self._event.set()
        self._event = asyncio.Event()


class _JwtInvalid(Exception):
    """A JWT-SVID that does not validate; the message is sent back as INVALID_ARGUMENT."""


# ------------------------------------------------------------------------------------ server


class DevWorkloadApi:
    """One gRPC server per endpoint; each endpoint serves exactly one SPIFFE ID.

    ``identities`` maps an endpoint (see ``parse_endpoint``) to the SPIFFE ID served there. The
    test hooks ``rotate_now``, ``set_extra_cas`` and ``set_federated`` must be called from the
    event loop that runs the server. Use as ``async with DevWorkloadApi(...) as api:``.
    """

    def __init__(
        self,
        ca: DevCA,
        identities: Mapping[str, SpiffeId | str],
        *,
        x509_ttl: dt.timedelta = DEFAULT_X509_TTL,
        jwt_ttl: dt.timedelta = DEFAULT_JWT_TTL,
        federated: Iterable[DevCA] = (),
        shutdown_grace: float = 0.5,
    ) -> None:
        if not identities:
            raise DevServerError("at least one endpoint=SPIFFE ID binding is required")
        if x509_ttl <= dt.timedelta(0) or jwt_ttl <= dt.timedelta(0):
            raise DevServerError("x509_ttl and jwt_ttl must be positive")
        self.ca = ca
        self.x509_ttl = x509_ttl
        self.jwt_ttl = jwt_ttl
        self.shutdown_grace = shutdown_grace
        self._bindings: list[tuple[Endpoint, SpiffeId]] = []
        seen_ids: set[SpiffeId] = set()
        seen_addresses: set[str] = set()
        for text, raw_id in identities.items():
            endpoint = parse_endpoint(text)
            sid = raw_id if isinstance(raw_id, SpiffeId) else SpiffeId.parse_workload(raw_id)
            if sid.trust_domain != ca.trust_domain or not sid.path:
                raise DevServerError(
                    f"{sid} is not a workload ID of trust domain {ca.trust_domain!r}"
                )
            if sid in seen_ids:
                raise DevServerError(f"{sid} is bound to more than one endpoint")
            if endpoint.bind_address in seen_addresses and endpoint.port != 0:
                raise DevServerError(f"endpoint {text!r} is given more than once")
            seen_ids.add(sid)
            seen_addresses.add(endpoint.bind_address)
            self._bindings.append((endpoint, sid))
        self._changes = _Changes()
        self._federated: tuple[DevCA, ...] = ()
        self.set_federated(federated)
        self._extra_cas: tuple[x509.Certificate, ...] = ()
        self._svids = {sid: self._issue(sid) for _, sid in self._bindings}
        self._servers: list[grpc.aio.Server] = []
        self._bound: list[tuple[Endpoint, SpiffeId]] = []
        self._socket_inodes: dict[str, tuple[int, int]] = {}
        self._rotator: asyncio.Task[None] | None = None
        self._state: Literal["new", "running", "stopped"] = "new"
        #: JWT-SVIDs issued per SPIFFE ID (tests check that clients cache them).
        self.jwt_svids_issued: collections.Counter[str] = collections.Counter()

    # ------------------------------------------------------------------------ lifecycle

    async def start(self) -> None:
        """Bind every endpoint and start serving (raises ``DevServerError`` if one cannot bind)."""
        if self._state != "new":
            raise DevServerError("a DevWorkloadApi can only be started once")
        self._state = "running"
        try:
            for endpoint, sid in self._bindings:
                await self._start_one(endpoint, sid)
        except BaseException:
            await self.stop()
            raise
        self._rotator = asyncio.create_task(self._rotate_forever(), name="dev-workload-api-rotate")

    async def _start_one(self, endpoint: Endpoint, sid: SpiffeId) -> None:
        if endpoint.kind == "unix":
            _prepare_unix_path(endpoint.path)
        # SO_REUSEPORT off: a second server must fail to bind a busy port, not share it.
        server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        self._servers.append(server)
        add_servicer: Any = workload_pb2_grpc.add_SpiffeWorkloadAPIServicer_to_server
        add_servicer(_Servicer(self, sid), server)
        try:
            port = server.add_insecure_port(endpoint.bind_address)
        except RuntimeError as exc:
            raise DevServerError(f"cannot listen on {endpoint.url}: {exc}") from exc
        await server.start()
        if endpoint.kind == "tcp":
            endpoint = Endpoint("tcp", host=endpoint.host, port=port)
        else:
            st = os.stat(endpoint.path)
            self._socket_inodes[endpoint.path] = (st.st_dev, st.st_ino)
        self._bound.append((endpoint, sid))

    async def stop(self) -> None:
        """End every stream cleanly (status OK, as SPIRE does on shutdown), then stop listening."""
        if self._state == "stopped":
            return
        self._state = "stopped"
        self._changes.notify()
        if self._rotator is not None:
            self._rotator.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._rotator
        await asyncio.gather(*(s.stop(self.shutdown_grace) for s in self._servers))
        self._servers.clear()
        for path, inode in self._socket_inodes.items():
            _remove_own_socket(path, inode)
        self._socket_inodes.clear()

    async def __aenter__(self) -> DevWorkloadApi:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()

    @property
    def endpoints(self) -> Mapping[str, str]:
        """SPIFFE ID -> endpoint URL (``unix:///...`` or ``tcp://127.0.0.1:<bound port>``)."""
        bound = self._bound if self._bound else self._bindings
        return {str(sid): endpoint.url for endpoint, sid in bound}

    @property
    def running(self) -> bool:
        return self._state == "running"

    # ------------------------------------------------------------------------ test hooks

    def current_svid(self, spiffe_id: SpiffeId | str) -> X509Svid:
        """The X509-SVID currently served for ``spiffe_id``."""
        sid = spiffe_id if isinstance(spiffe_id, SpiffeId) else SpiffeId.parse(spiffe_id)
        try:
            return self._svids[sid].svid
        except KeyError:
            raise DevServerError(f"{sid} is not served here") from None

    def rotate_now(self) -> None:
        """Issue fresh SVIDs (new keys and serials) for every identity and push them now."""
        for sid in list(self._svids):
            self._svids[sid] = self._issue(sid)
        self._changes.notify()

    def set_extra_cas(self, certs: Iterable[x509.Certificate]) -> None:
        """Append ``certs`` to our own trust domain's X.509 bundle (empty: remove them again)."""
        self._extra_cas = tuple(certs)
        self._changes.notify()

    def set_federated(self, devcas: Iterable[DevCA]) -> None:
        """Replace the federated trust domains (X.509 and JWT bundles) and push the change."""
        feds = tuple(devcas)
        domains = [f.trust_domain for f in feds]
        if self.ca.trust_domain in domains:
            raise DevServerError(
                f"cannot federate with our own trust domain {self.ca.trust_domain}"
            )
        if len(set(domains)) != len(domains):
            raise DevServerError(f"federated trust domains given twice: {domains}")
        self._federated = feds
        self._changes.notify()

    # ------------------------------------------------------------------------ state -> messages

    def _issue(self, sid: SpiffeId) -> _IssuedSvid:
        chain, key = self.ca.issue_x509_svid(sid, self.x509_ttl)
        lifetime = (chain[0].not_valid_after_utc - dt.datetime.now(dt.UTC)).total_seconds()
        return _IssuedSvid(
            svid=X509Svid(sid, chain, key),
            chain_der=b"".join(c.public_bytes(serialization.Encoding.DER) for c in chain),
            key_der=key.private_bytes(
                serialization.Encoding.DER,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            ),
            rotate_at=time.monotonic() + max(lifetime / 2, MIN_ROTATION_INTERVAL),
        )

    def _own_bundle_der(self) -> bytes:
        extra = b"".join(c.public_bytes(serialization.Encoding.DER) for c in self._extra_cas)
        return self.ca.x509_bundle_der() + extra

    def _x509_svid_response(self, sid: SpiffeId) -> Any:
        issued = self._svids[sid]
        return workload_pb2.X509SVIDResponse(
            svids=[
                workload_pb2.X509SVID(
                    spiffe_id=str(sid),
                    x509_svid=issued.chain_der,
                    x509_svid_key=issued.key_der,
                    bundle=self._own_bundle_der(),
                )
            ],
            federated_bundles={f.trust_domain_id: f.x509_bundle_der() for f in self._federated},
        )

    def _x509_bundles_response(self) -> Any:
        bundles = {f.trust_domain_id: f.x509_bundle_der() for f in self._federated}
        bundles[self.ca.trust_domain_id] = self._own_bundle_der()
        return workload_pb2.X509BundlesResponse(bundles=bundles)

    def _jwt_bundles_response(self) -> Any:
        bundles = {f.trust_domain_id: f.jwt_bundle_json() for f in self._federated}
        bundles[self.ca.trust_domain_id] = self.ca.jwt_bundle_json()
        return workload_pb2.JWTBundlesResponse(bundles=bundles)

    def _jwt_authorities(self) -> Mapping[str, Mapping[str, JwtPublicKey]]:
        """trust domain -> kid -> key: every JWT key we accept, chosen by ``sub``'s domain."""
        authorities = {f.trust_domain: f.jwt_keys() for f in self._federated}
        authorities[self.ca.trust_domain] = self.ca.jwt_keys()
        return authorities

    async def _stream(self, build: Any) -> AsyncIterator[Any]:
        """Yield ``build()`` now and again after every change that alters it, until we stop."""
        last = b""
        while self._state == "running":
            changed = self._changes.current()
            message = build()
            wire = message.SerializeToString(deterministic=True)
            if wire != last:
                last = wire
                yield message
            await changed.wait()

    async def _rotate_forever(self) -> None:
        """Renew each SVID at half its lifetime, as a SPIRE agent does."""
        while self._state == "running":
            now = time.monotonic()
            due = [sid for sid, issued in self._svids.items() if issued.rotate_at <= now]
            if due:
                for sid in due:
                    try:
                        self._svids[sid] = self._issue(sid)
                    except DevCAError as exc:  # e.g. the CA expired: keep serving, say why
                        log.error("cannot renew the X509-SVID of %s: %s", sid, exc)
                        self._svids[sid] = replace(self._svids[sid], rotate_at=now + 60)
                self._changes.notify()
                continue
            changed = self._changes.current()
            next_at = min(issued.rotate_at for issued in self._svids.values())
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(changed.wait(), next_at - now)


def _prepare_unix_path(path: str) -> None:
    """Remove a stale socket left by a previous run; never remove anything that is not a socket."""
    parent = Path(path).parent
    try:
        parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    except OSError as exc:
        raise DevServerError(f"cannot create socket directory {parent}: {exc}") from exc
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if not stat.S_ISSOCK(st.st_mode):
        raise DevServerError(f"{path} exists and is not a socket; refusing to replace it")
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as probe:
        probe.settimeout(1.0)
        try:
            probe.connect(path)
        except (ConnectionRefusedError, FileNotFoundError):
            pass  # stale: nobody listens any more
        except OSError as exc:
            raise DevServerError(f"cannot check socket {path}: {exc}") from exc
        else:
            raise DevServerError(f"{path}: another server is already listening there")
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _remove_own_socket(path: str, inode: tuple[int, int]) -> None:
    with contextlib.suppress(FileNotFoundError):
        st = os.lstat(path)
        if stat.S_ISSOCK(st.st_mode) and (st.st_dev, st.st_ino) == inode:
            os.unlink(path)


# ------------------------------------------------------------------------------------ servicer


class _Servicer:
    """The ``SpiffeWorkloadAPI`` methods for the one identity behind one socket.

    Status codes and messages follow SPIRE's agent (pkg/agent/endpoints/workload).
    """

    def __init__(self, api: DevWorkloadApi, spiffe_id: SpiffeId) -> None:
        self._api = api
        self._id = spiffe_id

    async def FetchX509SVID(self, request: Any, context: Context) -> AsyncIterator[Any]:
        await _check_header(context)
        async for message in self._api._stream(lambda: self._api._x509_svid_response(self._id)):
            yield message

    async def FetchX509Bundles(self, request: Any, context: Context) -> AsyncIterator[Any]:
        await _check_header(context)
        async for message in self._api._stream(self._api._x509_bundles_response):
            yield message

    async def FetchJWTBundles(self, request: Any, context: Context) -> AsyncIterator[Any]:
        await _check_header(context)
        async for message in self._api._stream(self._api._jwt_bundles_response):
            yield message

    async def FetchJWTSVID(self, request: Any, context: Context) -> Any:
        await _check_header(context)
        audience = [a for a in request.audience if a]
        if not audience:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if request.spiffe_id:
            try:
                requested = SpiffeId.parse(request.spiffe_id)
            except SpiffeIdError as exc:
                await context.abort(
                    grpc.StatusCode.INVALID_ARGUMENT, f"invalid requested SPIFFE ID: {exc}"
                )
            if requested != self._id:
                await context.abort(grpc.StatusCode.PERMISSION_DENIED, "no identity issued")
        token = self._api.ca.issue_jwt_svid(self._id, audience, self._api.jwt_ttl)
        self._api.jwt_svids_issued[str(self._id)] += 1
        return workload_pb2.JWTSVIDResponse(
            svids=[workload_pb2.JWTSVID(spiffe_id=str(self._id), svid=token)]
        )

    async def ValidateJWTSVID(self, request: Any, context: Context) -> Any:
        await _check_header(context)
        if not request.audience:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "audience must be specified")
        if not request.svid:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "svid must be specified")
        try:
            sub, claims = validate_jwt_svid(
                request.svid, request.audience, self._api._jwt_authorities()
            )
        except _JwtInvalid as exc:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
        struct = struct_pb2.Struct()
        struct.update(claims)
        return workload_pb2.ValidateJWTSVIDResponse(spiffe_id=str(sub), claims=struct)


async def _check_header(context: Context) -> None:
    """Refuse calls without ``workload.spiffe.io: true`` (it proves a deliberate Workload API call,
    not a browser-style request forged onto the socket)."""
    values = [v for k, v in context.invocation_metadata() or () if k == HEADER_KEY]
    if values[:1] != [HEADER_VALUE]:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, "security header missing from request"
        )


def validate_jwt_svid(
    token: str, audience: str, authorities: Mapping[str, Mapping[str, JwtPublicKey]]
) -> tuple[SpiffeId, dict[str, Any]]:
    """Validate a JWT-SVID the way the Workload API does: bundle by ``sub``'s trust domain, key by
    ``kid``, allowed algorithm, ``typ`` JWT/JOSE, ``exp`` and ``aud`` containing ``audience``."""
    try:
        header = jwt.get_unverified_header(token)
        unverified = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as exc:
        raise _JwtInvalid(f"malformed JWT-SVID: {exc}") from exc
    alg, kid, typ = header.get("alg"), header.get("kid"), header.get("typ")
    if alg not in JWT_SVID_ALGS:
        raise _JwtInvalid(f"unsupported JWT-SVID algorithm {alg!r}")
    if typ is not None and typ not in ("JWT", "JOSE"):
        raise _JwtInvalid(f"unsupported token type {typ!r}")
    if not isinstance(kid, str) or not kid:
        raise _JwtInvalid("token header missing key id")
    sub = unverified.get("sub")
    try:
        sid = SpiffeId.parse_workload(sub) if isinstance(sub, str) else None
    except SpiffeIdError as exc:
        raise _JwtInvalid(f"token has an invalid subject claim: {exc}") from exc
    if sid is None:
        raise _JwtInvalid("token has no subject claim")
    keys = authorities.get(sid.trust_domain)
    if keys is None:
        raise _JwtInvalid(f"no keys found for trust domain {sid.trust_domain!r}")
    key = keys.get(kid)
    if key is None:
        raise _JwtInvalid(f'no JWT authority "{kid}" found for trust domain {sid.trust_domain!r}')
    try:
        claims: dict[str, Any] = jwt.decode(
            token,
            key,
            algorithms=[alg],
            audience=audience,
            options={"require": ["exp", "aud", "sub"]},
        )
    except (jwt.PyJWTError, ValueError, TypeError) as exc:
        raise _JwtInvalid(f"JWT-SVID is not valid: {exc}") from exc
    return sid, claims


# ------------------------------------------------------------------------------------ CLI


class _UsageError(Exception):
    def __init__(self, flag: str, message: str) -> None:
        super().__init__(f"{flag}: {message}")


def configure_parser(parser: argparse.ArgumentParser) -> None:
    """Add the ``dev-workload-api`` flags to ``parser``."""
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=DEFAULT_STATE_DIR,
        metavar="DIR",
        help="where the dev CA key, certificate and JWT key live (created if missing; "
        f"default: ./{DEFAULT_STATE_DIR})",
    )
    parser.add_argument(
        "--trust-domain",
        type=_trust_domain_arg,
        default="example.org",
        help="trust domain of the dev CA (default: example.org)",
    )
    parser.add_argument(
        "--socket",
        dest="sockets",
        action="append",
        required=True,
        type=_socket_arg,
        metavar="PATH=SPIFFE_ID",
        help="serve SPIFFE_ID on PATH: /abs/path (or relative), unix:///abs/path or "
        "tcp://127.0.0.1:PORT (PORT 0 picks a free one); repeatable, one identity per socket",
    )
    parser.add_argument(
        "--x509-ttl",
        type=_seconds_arg,
        default=DEFAULT_X509_TTL.total_seconds(),
        metavar="SECONDS",
        help="X509-SVID lifetime; renewed at half-life (default: 3600)",
    )
    parser.add_argument(
        "--jwt-ttl",
        type=_seconds_arg,
        default=DEFAULT_JWT_TTL.total_seconds(),
        metavar="SECONDS",
        help="JWT-SVID lifetime (default: 300)",
    )
    parser.add_argument(
        "--jwt-alg",
        choices=JWT_ALGS,
        default=None,
        help="JWT-SVID signing algorithm of a NEW state dir (default: ES256; an existing state "
        "dir keeps its key, asking for another algorithm is an error)",
    )
    parser.add_argument(
        "--federate-with",
        dest="federate_with",
        action="append",
        default=[],
        type=_federate_arg,
        metavar="DIR=TRUST_DOMAIN",
        help="also publish the bundles of the dev CA of TRUST_DOMAIN kept in DIR (created if "
        "missing; run another dev-workload-api with --state-dir DIR to serve it); repeatable",
    )


def run_from_args(args: argparse.Namespace) -> int:
    """Run the dev Workload API until SIGINT/SIGTERM; 0 on a clean stop, 2 on bad arguments."""
    try:
        return asyncio.run(_serve(args))
    except _UsageError as exc:
        print(f"mcp-sidecar dev-workload-api: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:  # Ctrl-C before the signal handlers were installed
        return 0


async def _serve(args: argparse.Namespace) -> int:
    trust_domain: str = args.trust_domain
    bindings: list[tuple[Endpoint, SpiffeId]] = args.sockets
    for _, sid in bindings:
        if sid.trust_domain != trust_domain:
            raise _UsageError("--socket", f"{sid} is not in trust domain {trust_domain!r}")
    try:
        ca = DevCA.load_or_create(args.state_dir, trust_domain, jwt_alg=args.jwt_alg)
    except (DevCAError, SpiffeIdError) as exc:
        raise _UsageError("--state-dir", str(exc)) from exc
    federated: list[DevCA] = []
    for directory, td in args.federate_with:
        if td == trust_domain:
            raise _UsageError("--federate-with", f"{td} is our own trust domain")
        try:
            federated.append(DevCA.load_or_create(directory, td))
        except DevCAError as exc:
            raise _UsageError("--federate-with", str(exc)) from exc
    try:
        api = DevWorkloadApi(
            ca,
            {e.url: sid for e, sid in bindings},
            x509_ttl=dt.timedelta(seconds=args.x509_ttl),
            jwt_ttl=dt.timedelta(seconds=args.jwt_ttl),
            federated=federated,
        )
        await api.start()
    except DevServerError as exc:
        raise _UsageError("--socket", str(exc)) from exc

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(signum, stop.set)
    try:
        print(
            f"dev-workload-api: trust domain {trust_domain}, CA in {args.state_dir} "
            "(local/test stand-in for SPIRE, NOT for production)",
            file=sys.stderr,
            flush=True,
        )
        for spiffe_id, url in api.endpoints.items():
            print(f"ready {url} {spiffe_id}", flush=True)
        await stop.wait()
    finally:
        for signum in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(signum)
        await api.stop()
    return 0


def _trust_domain_arg(text: str) -> str:
    try:
        return validate_trust_domain(text)
    except SpiffeIdError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


def _socket_arg(text: str) -> tuple[Endpoint, SpiffeId]:
    where, sep, raw_id = text.rpartition("=")
    if not sep or not where or not raw_id:
        raise argparse.ArgumentTypeError(f"expected PATH=SPIFFE_ID, got {text!r}")
    if not where.startswith(("/", "unix:", "tcp:")):
        where = os.path.abspath(where)
    try:
        endpoint = parse_endpoint(where)
        sid = SpiffeId.parse_workload(raw_id)
    except (DevServerError, SpiffeIdError) as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc
    return endpoint, sid


def _seconds_arg(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive number of seconds, got {text!r}")
    return value


def _federate_arg(text: str) -> tuple[Path, str]:
    directory, sep, td = text.rpartition("=")
    if not sep or not directory:
        raise argparse.ArgumentTypeError(f"expected DIR=TRUST_DOMAIN, got {text!r}")
    try:
        return Path(directory), validate_trust_domain(td)
    except SpiffeIdError as exc:
        raise argparse.ArgumentTypeError(exc.message) from exc


__all__ = [
    "DEFAULT_JWT_TTL",
    "DEFAULT_X509_TTL",
    "DevServerError",
    "DevWorkloadApi",
    "Endpoint",
    "configure_parser",
    "parse_endpoint",
    "run_from_args",
    "validate_jwt_svid",
]
