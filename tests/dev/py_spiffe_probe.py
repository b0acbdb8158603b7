"""py-spiffe's client against a Workload API, in an interpreter of its own; prints one JSON object.

Why a process of its own: py-spiffe registers its copy of the Workload API messages (global
names such as ``X509SVIDRequest``) in protobuf's default descriptor pool, which then refuses
ours (``sidecar.identity.proto``) in the same process. An independent client is what these
tests are for, so it runs apart: ``python -m tests.dev.py_spiffe_probe URL [--jwt-audience A]``.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence
from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding
from spiffe import JwtSvid, WorkloadApiClient


def probe(url: str, audience: str | None, timeout: float) -> dict[str, Any]:
    with WorkloadApiClient(url, default_timeout=timeout) as client:
        context = client.fetch_x509_context(timeout=timeout)
        svid = context.default_svid
        found: dict[str, Any] = {
            "spiffe_id": str(svid.spiffe_id),
            "leaf": svid.leaf.public_bytes(Encoding.DER).hex(),
            "x509_bundles": {
                str(bundle.trust_domain): sorted(
                    ca.public_bytes(Encoding.DER).hex() for ca in bundle.x509_authorities
                )
                for bundle in context.x509_bundle_set.bundles
            },
        }
        if audience is not None:
            jwt_svid = client.fetch_jwt_svid({audience})
            bundles = client.fetch_jwt_bundles()
            validated = client.validate_jwt_svid(jwt_svid.token, audience)
            own = bundles.get_bundle_for_trust_domain(jwt_svid.spiffe_id.trust_domain)
            assert own is not None, "no JWT bundle for the SVID's own trust domain"
            checked = JwtSvid.parse_and_validate(jwt_svid.token, own, {audience})
            found["jwt"] = {
                "spiffe_id": str(jwt_svid.spiffe_id),
                "audience": sorted(jwt_svid.audience),
                "validated": str(validated.spiffe_id),
                "checked": str(checked.spiffe_id),
                "bundle_kids": {
                    str(bundle.trust_domain): sorted(bundle.jwt_authorities)
                    for bundle in bundles.bundles
                },
            }
    return found


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.dev.py_spiffe_probe")
    parser.add_argument("url")
    parser.add_argument("--jwt-audience", default=None)
    parser.add_argument("--timeout", type=float, default=10.0)
    args = parser.parse_args(argv)
    print(json.dumps(probe(args.url, args.jwt_audience, args.timeout)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
