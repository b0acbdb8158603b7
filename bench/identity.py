"""Identities of the benchmark: one dev CA, the dev Workload API for our sidecars, PEM files and a
JWT-SVID for Envoy.

"Same certificates" means: the same CA (one ``DevCA`` state directory) and the same SPIFFE IDs.
Our sidecars get their X.509-SVIDs and JWT-SVIDs from ``mcp-sidecar dev-workload-api`` (a
subprocess serving that CA, exactly as a SPIRE agent would in production); Envoy, which would get
them over SDS from SPIRE, reads leaves issued here from the same CA for the same IDs, written as
PEM files, and the JWT-SVID its egress attaches is signed by the same JWT key.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass
from pathlib import Path

from cryptography.hazmat.primitives import serialization

from bench import procs
from sidecar.dev.devca import DevCA
from sidecar.spiffe.ids import SpiffeId

TRUST_DOMAIN = "example.org"
AGENT_ID = f"spiffe://{TRUST_DOMAIN}/ns/agents/sa/agent"
SERVER_ID = f"spiffe://{TRUST_DOMAIN}/ns/mcp/sa/math"
ROGUE_ID = f"spiffe://{TRUST_DOMAIN}/ns/rogue/sa/intruder"
#: Who may call the server: the same allowlist for Envoy (RBAC) and us (allow_spiffe_ids).
ALLOW = [f"spiffe://{TRUST_DOMAIN}/ns/agents/**"]
#: Long lifetimes: nothing rotates or expires during a benchmark.
TTL = dt.timedelta(hours=24)


@dataclass(frozen=True)
class PemIdentity:
    spiffe_id: str
    chain: Path
    key: Path
    jwt_for_server: str  # a JWT-SVID of this identity with aud = SERVER_ID


@dataclass(frozen=True)
class Identities:
    state: Path
    ca_dir: Path
    bundle: Path  # the trust bundle (CA certificate) as PEM
    jwks: str  # the JWT bundle (JWKS JSON) of the trust domain
    agent: PemIdentity
    server: PemIdentity
    rogue: PemIdentity
    agent_socket: str = ""
    server_socket: str = ""


def prepare(state: Path) -> Identities:
    """Create (or load) the dev CA under ``state`` and write the PEM files Envoy and curl use."""
    ca_dir = state / "dev-ca"
    ca = DevCA.load_or_create(ca_dir, TRUST_DOMAIN)
    pem = state / "pem"
    pem.mkdir(parents=True, exist_ok=True)
    bundle = pem / "bundle.pem"
    bundle.write_bytes(ca.ca_cert.public_bytes(serialization.Encoding.PEM))

    def issue(name: str, sid: str) -> PemIdentity:
        spiffe_id = SpiffeId.parse(sid)
        chain, key = ca.issue_x509_svid(spiffe_id, TTL)
        chain_path, key_path = pem / f"{name}-chain.pem", pem / f"{name}-key.pem"
        chain_path.write_bytes(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in chain))
        key_path.write_bytes(
            key.private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
        key_path.chmod(0o600)
        token = ca.issue_jwt_svid(spiffe_id, [SERVER_ID], TTL)
        return PemIdentity(sid, chain_path, key_path, token)

    return Identities(
        state=state,
        ca_dir=ca_dir,
        bundle=bundle,
        jwks=json.dumps(json.loads(ca.jwt_bundle_json())),
        agent=issue("agent", AGENT_ID),
        server=issue("server", SERVER_ID),
        rogue=issue("rogue", ROGUE_ID),
        agent_socket=f"unix://{state}/agent.sock",
        server_socket=f"unix://{state}/server.sock",
    )


def start_workload_api(
    ids: Identities, sidecar_cli: list[str], cpus: list[int] | None
) -> procs.Proc:
    """``mcp-sidecar dev-workload-api`` serving the agent and the server identity (long TTLs)."""
    ttl = str(int(TTL.total_seconds()))
    argv = [
        *sidecar_cli,
        "dev-workload-api",
        "--state-dir",
        str(ids.ca_dir),
        "--trust-domain",
        TRUST_DOMAIN,
        "--socket",
        f"{ids.agent_socket}={AGENT_ID}",
        "--socket",
        f"{ids.server_socket}={SERVER_ID}",
        "--x509-ttl",
        ttl,
        "--jwt-ttl",
        ttl,
    ]
    proc = procs.start("workload-api", argv, ids.state / "workload-api.log", cpus=cpus)
    procs.wait_until(
        "dev Workload API",
        lambda: _ready_lines(proc) >= 2,
        30.0,
        [proc],
    )
    return proc


def _ready_lines(proc: procs.Proc) -> int:
    return sum(1 for line in proc.log_tail(100_000).splitlines() if line.startswith("ready "))
