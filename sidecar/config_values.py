"""The kinds of value the configuration's keys take: addresses, URLs, origins, durations, sizes,
SPIFFE IDs, JWS algorithms... each a ``sidecar.schema.Value``: its parser (strict, every problem a
``ConfigError`` naming the key path and what was expected), the type the docs name and its JSON
Schema. Pure: no I/O except ``CA_FILE``, which loads the file it names so a typo is a
configuration error, not a failed request later."""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
import ssl
from dataclasses import dataclass
from fractions import Fraction
from typing import Literal, TypeVar
from urllib.parse import SplitResult, urlsplit

from sidecar.errors import ConfigError
from sidecar.identity.endpoint import grpc_target
from sidecar.mcp.mux.names import PREFIX_MODES, target_name_problem
from sidecar.schema import (
    Parse,
    Value,
    as_string,
    choice,
    got,
    list_of,
    non_empty_string,
    short,
    whole_number,
)
from sidecar.spiffe.ids import SCHEME_PREFIX, SpiffeId, SpiffeIdError, validate_trust_domain
from sidecar.spiffe.match import Allowlist, PatternError, SpiffeIdPattern
from sidecar.tokens.claims import SCOPE_TOKEN_RE
from sidecar.tokens.exchange import TOKEN_TYPES
from sidecar.tokens.jose import ALLOWED_ALGORITHMS

_T = TypeVar("_T")


KIB = 1024
MIB = 1024 * KIB
GIB = 1024 * MIB
MAX_DURATION = 24 * 3600.0
"""Upper bound for every duration (seconds): anything longer is a typo, not a timeout."""
MAX_SIZE = 1024 * GIB
"""Upper bound for ``parse_size`` itself; each size key has its own, smaller, range."""
MAX_LEEWAY = 300.0
"""Upper bound of ``leeway`` (seconds): clock skew beyond 5 minutes is a broken clock."""
JWT_ALGORITHMS: tuple[str, ...] = ALLOWED_ALGORITHMS
"""The JWS algorithms a token may be signed with: the token layer's own list (asymmetric only,
never ``none`` or HS*), so config and validators cannot disagree."""

MtlsMode = Literal["required", "off"]
MTLS_MODES: tuple[MtlsMode, ...] = ("required", "off")


@dataclass(frozen=True, slots=True)
class ListenAddress:
    """A TCP address to listen on. ``host`` is an IP literal (IPv6 without brackets) or a
    lowercase host name; port 0 asks the OS for a free port (tests)."""

    host: str
    port: int

    @classmethod
    def parse(cls, text: str, path: str = "listen") -> ListenAddress:
        """Parse ``127.0.0.1:15001``, ``0.0.0.0:8443``, ``[::1]:8443`` or ``localhost:8080``."""
        if text.startswith("["):
            end = text.find("]")
            if end < 0 or text[end + 1 : end + 2] != ":":
                raise _not_listen(path, text, "expected [IPv6]:port")
            host_text, port_text = text[1:end], text[end + 2 :]
            try:
                host = str(ipaddress.IPv6Address(host_text))
            except ValueError:
                raise _not_listen(path, text, "brackets must hold an IPv6 address") from None
        else:
            host_text, colon, port_text = text.rpartition(":")
            if not colon:
                raise _not_listen(path, text, "no ':port'")
            if ":" in host_text:
                raise _not_listen(path, text, "write an IPv6 address in brackets, e.g. [::1]:8443")
            if not host_text:
                raise _not_listen(path, text, "the host is empty (use 0.0.0.0 for all interfaces)")
            try:
                host = _host(host_text)
            except ValueError as exc:
                raise _not_listen(path, text, str(exc)) from None
        if not re.fullmatch(r"[0-9]{1,5}", port_text, re.ASCII) or int(port_text) > 65535:
            raise _not_listen(path, text, "the port must be a number from 0 to 65535")
        return cls(host, int(port_text))

    @property
    def is_loopback(self) -> bool:
        """True for 127.0.0.0/8, ::1 and ``localhost``: reachable from this pod/host only."""
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return self.host == "localhost"

    @property
    def is_wildcard(self) -> bool:
        """True for 0.0.0.0 and ``::`` (all interfaces)."""
        return self.host in ("0.0.0.0", "::")  # noqa: S104 -- a comparison, not a bind

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"


def _not_listen(path: str, text: str, why: str) -> ConfigError:
    return ConfigError(path, f"not a host:port address: {why} (got {short(text)})")


_DURATION_RE = re.compile(r"(-?)([0-9]{1,12}(?:\.[0-9]{1,9})?)(ms|s|m|h)", re.ASCII)
_DURATION_UNITS = {
    "ms": Fraction(1, 1000),
    "s": Fraction(1),
    "m": Fraction(60),
    "h": Fraction(3600),
}
_DURATION_LIKE = "a duration like 250ms, 10s, 5m, 1h or a number of seconds"

_SIZE_RE = re.compile(r"([0-9]{1,15}(?:\.[0-9]{1,9})?) ?([kmg]i?b|b)?", re.ASCII | re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": KIB,
    "mib": MIB,
    "gib": GIB,
}
_SIZE_LIKE = "a size like 512KiB, 4MiB, 1MB or a number of bytes"


def parse_duration(value: object, path: str = "duration") -> float:
    """Seconds from a number (seconds) or a string ``250ms`` / ``10s`` / ``1.5m`` / ``1h``.

    Never negative, never more than ``MAX_DURATION``; raises only ``ConfigError``.
    """
    if isinstance(value, str):
        match = _DURATION_RE.fullmatch(value)
        if match is None:
            raise ConfigError(
                path,
                f"not a duration: {short(value)}; expected {_DURATION_LIKE} (units: ms, s, m, h)",
            )
        if match[1]:
            raise ConfigError(path, f"must not be negative (got {short(value)})")
        exact = Fraction(match[2]) * _DURATION_UNITS[match[3]]
        if exact > MAX_DURATION:
            raise ConfigError(path, f"must be at most 24h (got {short(value)})")
        return float(exact)
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ConfigError(path, f"expected {_DURATION_LIKE}, got {got(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(path, f"expected {_DURATION_LIKE}, got {got(value)}")
    if value < 0:
        raise ConfigError(path, f"must not be negative (got {got(value)})")
    if value > MAX_DURATION:
        raise ConfigError(path, f"must be at most 24h = 86400 seconds (got {got(value)})")
    return float(value)


def parse_size(value: object, path: str = "size") -> int:
    """Bytes from an integer or a string ``512KiB`` / ``4MiB`` / ``1MB`` (decimal) / ``1.5GiB``.

    KiB/MiB/GiB are powers of 1024, KB/MB/GB powers of 1000 (units are case-insensitive); the
    result must be a whole number of bytes from 0 to ``MAX_SIZE``. Raises only ``ConfigError``.
    """
    if isinstance(value, str):
        match = _SIZE_RE.fullmatch(value)
        if match is None:
            raise ConfigError(
                path,
                f"not a size: {short(value)}; expected {_SIZE_LIKE}"
                " (units: B, KB, MB, GB, KiB, MiB, GiB)",
            )
        exact = Fraction(match[1]) * _SIZE_UNITS[(match[2] or "b").lower()]
        if exact.denominator != 1:
            raise ConfigError(path, f"{short(value)} is not a whole number of bytes")
        if exact > MAX_SIZE:
            raise ConfigError(path, f"{short(value)} is too large (at most 1024GiB)")
        return int(exact)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(path, f"expected {_SIZE_LIKE}, got {got(value)}")
    if value < 0:
        raise ConfigError(path, f"must not be negative (got {got(value)})")
    if value > MAX_SIZE:
        raise ConfigError(path, f"{got(value)} is too large (at most 1024GiB)")
    return value


def _timeout(value: object, path: str) -> float:
    seconds = parse_duration(value, path)
    if seconds <= 0:
        raise ConfigError(path, "must be greater than 0")
    return seconds


def _size_between(low: int, high: int, low_text: str, high_text: str) -> Parse[int]:
    def parse(value: object, path: str) -> int:
        size = parse_size(value, path)
        if not low <= size <= high:
            raise ConfigError(path, f"must be from {low_text} to {high_text} (got {size} bytes)")
        return size

    return parse


_HOST_LABEL_RE = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?", re.ASCII)


def _destination_host(hostname: str | None, port: int | None, path: str, like: str) -> str:
    """The normalised host of a URL we connect to (``like``: the example a problem names)."""
    if not hostname:
        raise ConfigError(path, f"has no host; expected {like}")
    try:
        host = _host(hostname)
    except ValueError as exc:
        raise ConfigError(path, f"bad host: {exc}") from None
    if port == 0:
        raise ConfigError(path, "port 0 is not a valid destination")
    return host


def _host(text: str) -> str:
    """Normalise an IP literal (no brackets) or a DNS name; ValueError says what is wrong."""
    try:
        return str(ipaddress.ip_address(text))
    except ValueError:
        pass
    name = text.lower()
    if len(name) > 253:
        raise ValueError("the host name is longer than 253 characters")
    labels = name.split(".")
    if not all(_HOST_LABEL_RE.fullmatch(label) for label in labels):
        raise ValueError(f"{short(text)} is neither an IP address nor a valid host name")
    if labels[-1].isdigit():
        raise ValueError(f"{short(text)} is not a valid IPv4 address")
    return name


def _host_port(host: str, port: int | None, default: int | None) -> str:
    shown = f"[{host}]" if ":" in host else host
    return shown if port is None or port == default else f"{shown}:{port}"


def _split_url(text: str, path: str, like: str) -> tuple[SplitResult, int | None]:
    """``text`` split, and its port (None if it has none); a bad port is a problem."""
    try:
        url = urlsplit(text)
        return url, url.port
    except ValueError as exc:
        message = f"not a valid URL ({exc}): {short(text)}; expected {like}"
        raise ConfigError(path, message) from None


def _url(value: object, path: str, scheme: str, like: str, why_scheme: str) -> str:
    """An ``http(s)://host[:port]`` URL with no path; normalised with an explicit port."""
    text = as_string(value, path, like)
    default_port = {"http": 80, "https": 443}[scheme]
    if "://" not in text:
        raise ConfigError(path, f"not a URL: {short(text)}; expected {like}")
    url, port = _split_url(text, path, like)
    if url.scheme.lower() != scheme:
        got = f"{url.scheme}://" if url.scheme else "no scheme"
        raise ConfigError(path, f"must be an {scheme}:// URL ({why_scheme}), got {got}")
    if url.username is not None or url.password is not None:
        raise ConfigError(path, "must not contain user info (user:password@)")
    if url.path not in ("", "/") or url.query or url.fragment or "?" in text or "#" in text:
        raise ConfigError(
            path,
            f"must be {like} without a path, query or fragment "
            f"(the request path is forwarded as is), got {short(text)}",
        )
    host = _destination_host(url.hostname, port, path, like)
    shown = f"[{host}]" if ":" in host else host
    return f"{scheme}://{shown}:{default_port if port is None else port}"


def _origin(value: object, path: str) -> str:
    like = "https://app.example.com"
    text = as_string(value, path, like)
    try:
        url = urlsplit(text)
        port = url.port
    except ValueError as exc:
        raise ConfigError(path, f"not a valid origin ({exc}): {short(text)}") from None
    scheme = url.scheme.lower()
    if text == "*":
        raise ConfigError(path, "'*' is not an origin; leave the list empty to skip the check")
    if scheme not in ("http", "https") or not url.hostname:
        raise ConfigError(path, f"not an origin: {short(text)}; expected an origin like {like}")
    if (
        url.path
        or url.query
        or url.fragment
        or "?" in text
        or "#" in text
        or url.username is not None
        or url.password is not None
    ):
        raise ConfigError(
            path,
            f"an origin is scheme://host[:port] only, without path (not even '/'), query or "
            f"user info; got {short(text)}",
        )
    try:
        host = _host(url.hostname)
    except ValueError as exc:
        raise ConfigError(path, f"bad host: {exc}") from None
    return f"{scheme}://{_host_port(host, port, {'http': 80, 'https': 443}[scheme])}"


def _route_host(value: object, path: str) -> str | None:
    if value is None:
        return None
    text = as_string(value, path, "math.example.com or math.example.com:8080")
    if text.startswith("["):
        end = text.find("]")
        host_text, rest = (text[1:end], text[end + 1 :]) if end > 0 else (text, "")
        if end < 0 or ":" not in host_text:
            raise ConfigError(path, f"not a host name: {short(text)}")
    else:
        host_text, colon, port_text = text.partition(":")
        rest = colon + port_text
    if rest and not re.fullmatch(r":[0-9]{1,5}", rest, re.ASCII):
        raise ConfigError(path, f"expected host or host:port, got {short(text)}")
    if rest and not 0 < int(rest[1:]) <= 65535:
        raise ConfigError(path, f"the port must be from 1 to 65535, got {short(text)}")
    try:
        host = _host(host_text)
    except ValueError as exc:
        raise ConfigError(path, str(exc)) from None
    return f"[{host}]{rest}" if ":" in host else f"{host}{rest}"


_PCHARS = r"[A-Za-z0-9._~!$&'()*+,;=:@-]"
_PATH_PREFIX_RE = re.compile(rf"/|(/{_PCHARS}+)+", re.ASCII)
_ROUTE_NAME_RE = re.compile(r"[a-z0-9][a-z0-9_-]{0,62}", re.ASCII)


def _path_prefix(value: object, path: str) -> str:
    text = as_string(value, path, "/math")
    if not text.startswith("/"):
        raise ConfigError(path, f"must start with '/', got {short(text)}")
    if text != "/" and text.endswith("/"):
        raise ConfigError(path, f"must not end with '/' (write {short(text.rstrip('/'))})")
    if not _PATH_PREFIX_RE.fullmatch(text):
        raise ConfigError(
            path,
            f"{short(text)} is not a plain URL path: use '/'-separated segments of letters, "
            "digits and -._~!$&'()*+,;=:@ (no '//', '%', '?', '#' or spaces)",
        )
    if any(segment in (".", "..") for segment in text.split("/")):
        raise ConfigError(path, f"{short(text)} must not contain '.' or '..' segments")
    return text


def _sni(value: object, path: str) -> str:
    text = as_string(value, path, "math.mcp.svc")
    try:
        host = _host(text)
    except ValueError as exc:
        raise ConfigError(path, f"not a DNS name: {exc}") from None
    if _is_ip_literal(host):
        raise ConfigError(path, f"must be a DNS name, not an IP address (got {short(text)})")
    return host


def default_sni(upstream: str) -> str | None:
    """The upstream URL's host when it is a name (TLS sends no IP literal as SNI)."""
    host = urlsplit(upstream).hostname
    return None if not host or _is_ip_literal(host) else host


def _is_ip_literal(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _route_name(value: object, path: str) -> str:
    text = as_string(value, path, "math")
    if not _ROUTE_NAME_RE.fullmatch(text):
        raise ConfigError(
            path,
            f"{short(text)} is not a route name: use lowercase letters, digits, '-' and '_', "
            "starting with a letter or digit, at most 63 characters",
        )
    return text


def _server_spiffe_id(value: object, path: str) -> SpiffeId:
    text = as_string(value, path, "spiffe://example.org/ns/mcp/sa/math")
    if "*" in text:
        raise ConfigError(
            path, "wildcards are not allowed: give the exact SPIFFE ID of the server workload"
        )
    try:
        return SpiffeId.parse_workload(text)
    except SpiffeIdError as exc:
        raise ConfigError(path, f"not a SPIFFE ID: {exc.message}") from None


def _trust_domain(value: object, path: str) -> str:
    text = as_string(value, path, "example.org")
    if text.startswith(SCHEME_PREFIX):
        raise ConfigError(
            path, f"expected a bare trust domain name like example.org, without {SCHEME_PREFIX!r}"
        )
    try:
        return validate_trust_domain(text)
    except SpiffeIdError as exc:
        raise ConfigError(path, f"not a valid trust domain: {exc.message}") from None


def _workload_api(value: object, path: str) -> str | None:
    if value is None:
        return None
    text = as_string(value, path, "unix:///run/spire/sockets/agent.sock")
    grpc_target(text, field=path)  # raises ConfigError naming ``path``
    return text


def _listen(like: str) -> Parse[ListenAddress]:
    def parse(value: object, path: str) -> ListenAddress:
        return ListenAddress.parse(as_string(value, path, like), path)

    return parse


# ---------------------------------------------------------------------------- token layer values

_SYMMETRIC_ALGORITHMS = ("HS256", "HS384", "HS512")
_LOOPBACK_ONLY_HTTP = "http:// is allowed only for a loopback host: 127.0.0.1, [::1] or localhost"
_URL_TEXT_RE = re.compile(r"[\x21-\x7e]+", re.ASCII)
_TYP_RE = re.compile(r"[A-Za-z0-9!#$&^_.+/-]+", re.ASCII)
_CLAIM_RE = re.compile(r"[\x21-\x7e]+", re.ASCII)


def _leeway(value: object, path: str) -> float:
    seconds = parse_duration(value, path)
    if seconds > MAX_LEEWAY:
        raise ConfigError(path, f"must be from 0 to 5m (got {seconds:g} seconds)")
    return seconds


def _algorithm(value: object, path: str) -> str:
    listed = ", ".join(JWT_ALGORITHMS)
    if isinstance(value, str):
        if value in JWT_ALGORITHMS:
            return value
        if value.lower() == "none":
            raise ConfigError(
                path, f"'none' (unsigned tokens) is never accepted; expected one of {listed}"
            )
        if value.upper() in _SYMMETRIC_ALGORITHMS:
            raise ConfigError(
                path,
                f"{short(value)} is refused: HMAC algorithms need a shared secret, and whoever "
                f"holds it can mint tokens; expected one of {listed}",
            )
        close = difflib.get_close_matches(value.upper(), JWT_ALGORITHMS, n=1)
        hint = f"; did you mean {close[0]!r}?" if close else ""
        raise ConfigError(path, f"expected one of {listed}, got {got(value)}{hint}")
    raise ConfigError(path, f"expected one of {listed}, got {got(value)}")


def _scope(value: object, path: str) -> str:
    text = as_string(value, path, "mcp:tools")
    if not SCOPE_TOKEN_RE.fullmatch(text):
        raise ConfigError(
            path,
            f"{short(text)} is not a scope: a scope is one non-empty word of printable ASCII "
            "without spaces, '\"' or '\\' (list several scopes as separate items)",
        )
    return text


def _is_loopback_host(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host == "localhost"


def _token_url(like: str, *, query: bool = False) -> Parse[str]:
    """An ``https://`` URL (``http://`` only on loopback), kept exactly as written: token
    claims (``iss``, ``aud``) are compared byte for byte, so nothing is normalised."""

    def parse(value: object, path: str) -> str:
        text = as_string(value, path, like)
        if "://" not in text:
            raise ConfigError(path, f"not a URL: {short(text)}; expected {like}")
        if not _URL_TEXT_RE.fullmatch(text):
            raise ConfigError(
                path,
                f"must be printable ASCII without spaces (percent-encode anything else), "
                f"got {short(text)}",
            )
        url, port = _split_url(text, path, like)
        scheme = url.scheme.lower()
        if scheme not in ("https", "http"):
            raise ConfigError(path, f"must be an https:// URL, got {short(url.scheme)}://")
        if url.username is not None or url.password is not None:
            raise ConfigError(path, "must not contain user info (user:password@)")
        if url.fragment or "#" in text:
            raise ConfigError(path, f"must not contain a fragment ('#'), got {short(text)}")
        if not query and (url.query or "?" in text):
            raise ConfigError(path, f"must not contain a query ('?'), got {short(text)}")
        host = _destination_host(url.hostname, port, path, like)
        if scheme == "http" and not _is_loopback_host(host):
            raise ConfigError(
                path, f"must be an https:// URL ({_LOOPBACK_ONLY_HTTP}), got {short(text)}"
            )
        return text

    return parse


_issuer_url = _token_url("https://auth.example.com")
_resource_url = _token_url("https://mcp.example.com/mcp")
_jwks_uri = _token_url("https://auth.example.com/.well-known/jwks.json", query=True)
_token_endpoint = _token_url("https://sts.example.com/oauth2/token", query=True)


def _public_url(value: object, path: str) -> str:
    origin = _origin(value, path)
    url = urlsplit(origin)
    if url.scheme == "http" and not _is_loopback_host(url.hostname or ""):
        raise ConfigError(
            path, f"must be an https:// origin ({_LOOPBACK_ONLY_HTTP}), got {short(origin)}"
        )
    return origin


def origin_of(url_text: str) -> str:
    """The normalised origin of an already validated URL (the default ``public_url``)."""
    url = urlsplit(url_text)
    return _origin(f"{url.scheme}://{url.netloc}", "")


def _typ(value: object, path: str) -> str:
    text = as_string(value, path, "at+jwt")
    if not _TYP_RE.fullmatch(text):
        raise ConfigError(path, f"not a media type like at+jwt: {short(text)}")
    return text


def _claim_name(like: str) -> Parse[str]:
    def parse(value: object, path: str) -> str:
        text = as_string(value, path, like)
        if not _CLAIM_RE.fullmatch(text):
            raise ConfigError(
                path, f"expected a claim name like {like} (no spaces), got {short(text)}"
            )
        return text

    return parse


# ------------------------------------------------------------------------------------ sections


_HEADER_NAME_RE = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]+", re.ASCII)
_NOT_SUBJECT_HEADERS = frozenset(
    {"host", "connection", "content-length", "transfer-encoding", "te", "upgrade", "cookie"}
)


def _header_name(value: object, path: str) -> str:
    text = as_string(value, path, "Authorization")
    if not _HEADER_NAME_RE.fullmatch(text):
        raise ConfigError(path, f"not an HTTP header name: {short(text)}")
    if text.lower() in _NOT_SUBJECT_HEADERS or text.lower().startswith("mcp-"):
        raise ConfigError(path, f"{short(text)} cannot carry the user's token")
    return text


def _ca_file(value: object, path: str) -> str:
    """A PEM file of CA certificates, loaded once here so a typo is a config error."""
    text = _file_path("/etc/mcp-sidecar/sts-ca.pem")(value, path)
    try:
        ssl.create_default_context(cafile=text)
    except (OSError, ssl.SSLError, ValueError) as exc:
        raise ConfigError(path, f"cannot load CA certificates from {short(text)}: {exc}") from None
    return text


def _subject_token_type(value: object, path: str) -> str:
    text = as_string(value, path, "access_token")
    if text in TOKEN_TYPES:
        return TOKEN_TYPES[text]
    if text.startswith("urn:") and _URL_TEXT_RE.fullmatch(text):
        return text
    raise ConfigError(
        path,
        f"expected one of {', '.join(TOKEN_TYPES)} or a token type URI (urn:...), got "
        f"{short(text)}",
    )


def _file_path(like: str) -> Parse[str]:
    def parse(value: object, path: str) -> str:
        text = as_string(value, path, like)
        if not text or "\x00" in text:
            raise ConfigError(path, f"expected a file path like {like}")
        return text

    return parse


def _sidecar_url(value: object, path: str) -> str:
    return _url(
        value,
        path,
        "https",
        "https://math.mcp.svc:8443",
        "routes always originate mTLS to the server's sidecar",
    )


def _target_name(value: object, path: str) -> str:
    text = as_string(value, path, "math")
    problem = target_name_problem(text)
    if problem is not None:
        raise ConfigError(path, problem)
    return text


def valid_or_none(parse: Parse[_T], value: object) -> _T | None:
    try:
        return parse(value, "")
    except ConfigError:
        return None


def _allowlist(value: object, path: str) -> Allowlist:
    return Allowlist.from_strings(_SPIFFE_PATTERNS.parse(value, path))


def _spiffe_pattern(value: object, path: str) -> str:
    like = "spiffe://example.org/ns/agents/sa/*"
    if not isinstance(value, str):
        raise ConfigError(path, f"expected a string like {like}, got {got(value)}")
    try:
        SpiffeIdPattern.parse(value)
    except PatternError as exc:
        raise ConfigError(path, f"not a SPIFFE ID pattern: {exc.message}") from None
    return value


def _mtls(value: object, path: str) -> MtlsMode:
    if value is False:
        raise ConfigError(
            path, "expected 'required' or 'off', got boolean false (quote it: mtls: 'off')"
        )
    return _MTLS_CHOICE.parse(value, path)


# ------------------------------------------------------------------------------ the values


def show_duration(seconds: float) -> str:
    """How the docs write a duration: ``5m``, ``30s``, ``250ms``."""
    for unit, size in (("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size and seconds % size == 0:
            return f"{seconds / size:g}{unit}"
    return f"{seconds * 1000:g}ms" if seconds else "0"


def show_size(size: int) -> str:
    for unit, factor in (("GiB", GIB), ("MiB", MIB), ("KiB", KIB)):
        if size >= factor and size % factor == 0:
            return f"{size // factor}{unit}"
    return str(size)


_DURATION_JSON = {
    "type": ["number", "string"],
    "minimum": 0,
    "maximum": MAX_DURATION,
    "pattern": r"^[0-9]{1,12}(\.[0-9]{1,9})?(ms|s|m|h)$",
}
_HTTP_URL = r"^[Hh][Tt][Tt][Pp][Ss]?://[^\s]+$"
_HTTPS_ONLY = r"^[Hh][Tt][Tt][Pp][Ss]://[^/?#\s]+/?$"

DURATION: Value[float] = Value(parse_duration, "duration", _DURATION_JSON, show_duration)
TIMEOUT: Value[float] = Value(_timeout, "duration > 0", _DURATION_JSON, show_duration)
LEEWAY: Value[float] = Value(_leeway, "duration", _DURATION_JSON, show_duration)


def size(low: int, high: int, low_text: str, high_text: str) -> Value[int]:
    """A size from ``low`` to ``high`` bytes (``low_text`` / ``high_text`` as the docs say)."""
    json = {
        "type": ["integer", "string"],
        "minimum": low,
        "maximum": high,
        "pattern": r"^[0-9]{1,15}(\.[0-9]{1,9})? ?([KkMmGg][Ii]?[Bb]|[Bb])?$",
    }
    return Value(_size_between(low, high, low_text, high_text), "size", json, show_size)


def listen(like: str) -> Value[ListenAddress]:
    json = {"type": "string", "pattern": r"^(\[[0-9A-Fa-f:.]+\]|[^\[\]:\s]+):[0-9]{1,5}$"}
    return Value(_listen(like), "address", json, str)


TRUST_DOMAIN: Value[str] = Value(
    _trust_domain, "string", {"type": "string", "pattern": r"^(?!spiffe://)[a-z0-9._-]+$"}
)
WORKLOAD_API: Value[str | None] = Value(
    _workload_api, "string", {"type": "string", "pattern": r"^(unix|tcp)://"}
)
LOCAL_UPSTREAM: Value[str] = Value(
    lambda v, p: _url(
        v, p, "http", "http://127.0.0.1:8000", "the local MCP server, reached in plain HTTP"
    ),
    "string",
    {"type": "string", "pattern": r"^[Hh][Tt][Tt][Pp]://[^/?#\s]+/?$"},
)
SIDECAR_URL: Value[str] = Value(_sidecar_url, "string", {"type": "string", "pattern": _HTTPS_ONLY})
ORIGINS: Value[tuple[str, ...]] = list_of(
    Value(_origin, "origin", {"type": "string", "pattern": _HTTP_URL}),
    "origins like https://app.example.com",
    label="list of origins",
)
PUBLIC_URL: Value[str] = Value(_public_url, "origin", {"type": "string", "pattern": _HTTP_URL})
_MTLS_CHOICE: Value[MtlsMode] = choice(*MTLS_MODES)
MTLS: Value[MtlsMode] = _MTLS_CHOICE.but(_mtls)
_SPIFFE_PATTERNS = list_of(
    Value(_spiffe_pattern, "SPIFFE ID pattern", {"type": "string", "pattern": "^spiffe://"}),
    "SPIFFE ID patterns like spiffe://example.org/ns/agents/sa/*",
)
ALLOWLIST: Value[Allowlist] = Value(
    _allowlist, "list of SPIFFE ID patterns", _SPIFFE_PATTERNS.json, lambda a: "`[]`"
)
SERVER_SPIFFE_ID: Value[SpiffeId] = Value(
    _server_spiffe_id, "SPIFFE ID", {"type": "string", "pattern": r"^spiffe://[^*]+$"}
)
JWT_SVID_AUDIENCE: Value[str] = non_empty_string("spiffe://example.org/ns/mcp/sa/math")
AUDIENCES: Value[tuple[str, ...]] = list_of(
    JWT_SVID_AUDIENCE,
    "audiences like spiffe://example.org/ns/mcp/sa/math",
    empty="must not be empty: a JWT-SVID is accepted only if its aud names one of these "
    "(usually this server's SPIFFE ID)",
    label="list of strings",
)
ALGORITHMS: Value[tuple[str, ...]] = list_of(
    Value(_algorithm, "string", {"enum": list(JWT_ALGORITHMS)}),
    "JWS algorithms like RS256, ES256",
    empty=f"must not be empty; expected some of {', '.join(JWT_ALGORITHMS)}",
    label="list of strings",
)
SCOPE: Value[str] = Value(_scope, "scope", {"type": "string", "pattern": r'^[^\s"\\]+$'})
SCOPES: Value[tuple[str, ...]] = list_of(SCOPE, "scopes like mcp:tools", label="list of scopes")


def _token_url_value(like: str, *, query: bool = False) -> Value[str]:
    return Value(_token_url(like, query=query), "URL", {"type": "string", "pattern": _HTTP_URL})


ISSUER_URL = _token_url_value("https://auth.example.com")
RESOURCE_URL = _token_url_value("https://mcp.example.com/mcp")
JWKS_URI = _token_url_value("https://auth.example.com/.well-known/jwks.json", query=True)
TOKEN_ENDPOINT = _token_url_value("https://sts.example.com/oauth2/token", query=True)
AUTHORIZATION_SERVERS: Value[tuple[str, ...]] = list_of(
    ISSUER_URL,
    "issuer URLs like https://auth.example.com",
    empty="must not be empty: MCP clients find the authorization server here; omit it to "
    "advertise issuer",
    label="list of URLs",
)
TYP: Value[str] = Value(_typ, "string", {"type": "string", "pattern": r"^[A-Za-z0-9!#$&^_.+/-]+$"})


def claim_name(like: str) -> Value[str]:
    return Value(_claim_name(like), "string", {"type": "string", "pattern": r"^[!-~]+$"})


def file_path(like: str) -> Value[str]:
    return Value(_file_path(like), "string", {"type": "string", "minLength": 1})


HEADER_NAME: Value[str] = Value(
    _header_name, "string", {"type": "string", "pattern": r"^[!#$%&'*+.^_`|~0-9A-Za-z-]+$"}
)
CA_FILE: Value[str] = Value(_ca_file, "string", {"type": "string", "minLength": 1})
SUBJECT_TOKEN_TYPE: Value[str] = Value(_subject_token_type, "string", {"type": "string"})
ROUTE_NAME: Value[str] = Value(
    _route_name, "string", {"type": "string", "pattern": r"^[a-z0-9][a-z0-9_-]{0,62}$"}
)
PATH_PREFIX: Value[str] = Value(_path_prefix, "string", {"type": "string", "pattern": "^/"})
ROUTE_HOST: Value[str | None] = Value(_route_host, "string", {"type": "string"})
SNI: Value[str] = Value(_sni, "DNS name", {"type": "string"})
TARGET_NAME: Value[str] = Value(
    _target_name, "string", {"type": "string", "pattern": "^[a-z][a-z0-9-]{0,31}$"}
)
PREFIX_MODE = choice(*PREFIX_MODES)
MAX_SESSIONS = whole_number(1, 1_000_000, label="whole number 1..1000000")
