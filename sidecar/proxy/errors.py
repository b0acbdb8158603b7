"""Refusals and upstream failures of the data path, each with its HTTP status and reason label."""

from __future__ import annotations

from sidecar.errors import SidecarError


class ProxyError(SidecarError):
    """Base for every error the proxy answers with a JSON body instead of forwarding."""


class BadRequest(ProxyError):
    status = 400
    reason = "bad_request"


class Forbidden(ProxyError):
    status = 403
    reason = "forbidden"


class NoRoute(ProxyError):
    status = 404
    reason = "no_route"


class MethodNotAllowed(ProxyError):
    """Answered with an ``Allow`` header listing ``allow`` (RFC 9110 §15.5.6)."""

    status = 405
    reason = "method_not_allowed"

    def __init__(self, message: str, *, allow: str) -> None:
        super().__init__(message)
        self.allow = allow


class PayloadTooLarge(ProxyError):
    status = 413
    reason = "request_body_too_large"


class UpstreamUnavailable(ProxyError):
    """Could not reach the upstream, or it was not who it must be (nothing was sent)."""

    status = 502
    reason = "upstream_unavailable"


class UpstreamOverflow(ProxyError):
    """A circuit breaker of the upstream refused the request (Envoy's overflow, response flag
    ``UO``): answered at once, nothing was sent. ``limit`` names the threshold."""

    status = 503
    reason = "upstream_overflow"

    def __init__(self, message: str, *, limit: str) -> None:
        super().__init__(message)
        self.limit = limit

    def to_json(self) -> dict[str, object]:
        return {**super().to_json(), "limit": self.limit}


class UpstreamTimeout(ProxyError):
    status = 504
    reason = "upstream_timeout"


class JwtSvidUnavailable(ProxyError):
    """The Workload API could not give us a JWT-SVID for the route's audience."""

    status = 503
    reason = "jwt_svid_unavailable"
