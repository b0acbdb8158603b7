#!/usr/bin/env bash
# Create a private CA and a serving certificate for the injector webhook with openssl.
#
#   deploy/kind/webhook-cert.sh OUTDIR [SERVICE] [NAMESPACE]
#
# Writes OUTDIR/ca.crt, OUTDIR/ca.key, OUTDIR/tls.crt and OUTDIR/tls.key (keys readable by the
# owner only). The serving certificate names the Service the API server calls
# (SERVICE.NAMESPACE.svc, default mcp-sidecar-injector.mcp-sidecar-system.svc) in its
# subjectAltName; ca.crt is what goes into the MutatingWebhookConfiguration's caBundle.
# DAYS (environment, default 365) sets the validity. Works with OpenSSL 1.1+, 3.x and LibreSSL.
set -euo pipefail

if [[ $# -lt 1 || $# -gt 3 ]]; then
  echo "usage: $0 OUTDIR [SERVICE] [NAMESPACE]" >&2
  exit 2
fi
out=$1
service=${2:-mcp-sidecar-injector}
namespace=${3:-mcp-sidecar-system}
days=${DAYS:-365}

command -v openssl >/dev/null 2>&1 || { echo "error: openssl is required" >&2; exit 1; }

mkdir -p "$out"
umask 077
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

cat >"$work/ca.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = mcp-sidecar-injector-ca
[v3_ca]
basicConstraints = critical, CA:TRUE
keyUsage = critical, keyCertSign, cRLSign
subjectKeyIdentifier = hash
CNF

cat >"$work/server.cnf" <<CNF
[req]
distinguished_name = dn
prompt = no
[dn]
CN = ${service}.${namespace}.svc
[v3_server]
basicConstraints = critical, CA:FALSE
keyUsage = critical, digitalSignature, keyEncipherment
extendedKeyUsage = serverAuth
subjectKeyIdentifier = hash
authorityKeyIdentifier = keyid
subjectAltName = DNS:${service}.${namespace}.svc, DNS:${service}.${namespace}.svc.cluster.local, DNS:${service}.${namespace}, DNS:${service}
CNF

# openssl's progress output only matters when it fails.
quiet() {
  local output
  if ! output=$("$@" 2>&1); then
    printf '%s\n' "$output" >&2
    echo "error: failed: $*" >&2
    exit 1
  fi
}

quiet openssl req -x509 -new -nodes -newkey rsa:2048 -sha256 -days "$days" \
  -config "$work/ca.cnf" -extensions v3_ca \
  -keyout "$out/ca.key" -out "$out/ca.crt"
quiet openssl req -new -nodes -newkey rsa:2048 -sha256 \
  -config "$work/server.cnf" \
  -keyout "$out/tls.key" -out "$work/tls.csr"
serial=$(openssl rand -hex 16)
quiet openssl x509 -req -sha256 -days "$days" -in "$work/tls.csr" \
  -CA "$out/ca.crt" -CAkey "$out/ca.key" -set_serial "0x${serial}" \
  -extfile "$work/server.cnf" -extensions v3_server \
  -out "$out/tls.crt"
chmod 0644 "$out/ca.crt" "$out/tls.crt"
echo "wrote $out/ca.crt $out/tls.crt $out/tls.key for ${service}.${namespace}.svc" >&2
