#!/usr/bin/env bash
# One command from nothing to a working agentic mesh on kind (docs/kubernetes.md):
#
#   deploy/kind/up.sh
#
# Needs docker (a running engine), kind, kubectl and openssl. Creates the kind cluster (or reuses
# it), builds the mcp-sidecar image and loads it into the cluster, installs SPIRE (server,
# controller manager, agent, SPIFFE CSI driver), the sidecar injector and the demo (an MCP math
# server and an agent, both injected), then runs a smoke check: it prints the agent's successful
# tool calls and runs a workload outside the math server's allowlist, which must be refused.
# Running it again is safe: it reuses the cluster, the injector certificate and the objects, and
# rolls the deployments so that a rebuilt image is used.
#
# Environment: CLUSTER_NAME (default mcp-sidecar), KIND_NODE_IMAGE (default: kind's own; must be
# Kubernetes >= 1.29), TIMEOUT for each wait (default 300s).
set -euo pipefail

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CLUSTER_NAME=${CLUSTER_NAME:-mcp-sidecar}
KIND_NODE_IMAGE=${KIND_NODE_IMAGE:-}
TIMEOUT=${TIMEOUT:-300s}
CONTEXT="kind-${CLUSTER_NAME}"
IMAGE=mcp-sidecar:dev           # the sidecar and the injector (Dockerfile's default target)
DEMO_IMAGE=mcp-sidecar-demo:dev # the demo workloads (Dockerfile target "demo": + the MCP SDK)
MIN_MINOR=29          # native sidecars (restartable init containers) are on by default since 1.29
INJECTOR_NS=mcp-sidecar-system
DEMO_NS=mcp-demo

step() { printf '\n==> %s\n' "$*"; }
die() {
  printf 'error: %s\n' "$*" >&2
  exit 1
}
kc() { kubectl --context "$CONTEXT" "$@"; }

# Seconds in a duration like 300s, 5m or 300.
seconds() {
  local value=$1
  case $value in
    *m) echo $((${value%m} * 60)) ;;
    *s) echo "${value%s}" ;;
    *) echo "$value" ;;
  esac
}

check_prerequisites() {
  step "Checking prerequisites"
  local tool missing=()
  for tool in docker kind kubectl openssl; do
    command -v "$tool" >/dev/null 2>&1 || missing+=("$tool")
  done
  if ((${#missing[@]} > 0)); then
    die "missing: ${missing[*]} (see docs/kubernetes.md, Prerequisites)"
  fi
  docker info >/dev/null 2>&1 || die "cannot reach the Docker engine (is it running?)"
}

create_cluster() {
  step "kind cluster ${CLUSTER_NAME}"
  if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
    echo "exists, reusing it"
  else
    local args=(create cluster --name "$CLUSTER_NAME" --wait 120s)
    if [[ -n $KIND_NODE_IMAGE ]]; then
      args+=(--image "$KIND_NODE_IMAGE")
    fi
    kind "${args[@]}"
  fi
  local minor
  minor=$(kc get --raw /version | sed -n 's/.*"minor": *"\([0-9]*\).*/\1/p')
  [[ -n $minor ]] || die "cannot read the cluster's Kubernetes version"
  if ((minor < MIN_MINOR)); then
    die "Kubernetes 1.${minor}: the sidecar is injected as a native sidecar, which needs 1.${MIN_MINOR}+ (set KIND_NODE_IMAGE)"
  fi
  echo "Kubernetes 1.${minor}"
}

build_image() {
  step "Building ${IMAGE} and ${DEMO_IMAGE} and loading them into the cluster"
  docker build -t "$IMAGE" "$ROOT"
  docker build --target demo -t "$DEMO_IMAGE" "$ROOT"
  kind load docker-image "$IMAGE" "$DEMO_IMAGE" --name "$CLUSTER_NAME"
}

install_spire() {
  step "Installing SPIRE"
  # The CRD first: the ClusterSPIFFEID in the same kustomization needs it established.
  kc apply -f "$ROOT/spire/crds/"
  kc wait --for=condition=Established --timeout="$TIMEOUT" crd/clusterspiffeids.spire.spiffe.io
  kc apply -k "$ROOT/spire"
  kc -n spire-system rollout status statefulset/spire-server --timeout="$TIMEOUT"
  kc -n spire-system rollout status daemonset/spire-agent --timeout="$TIMEOUT"
}

# Names (kind/name) of the given deployments that exist in namespace $1.
existing_deployments() {
  local namespace=$1 name
  shift
  for name in "$@"; do
    if kc -n "$namespace" get "deployment/${name}" >/dev/null 2>&1; then
      echo "deployment/${name}"
    fi
  done
}

install_injector() {
  step "Installing the sidecar injector"
  kc apply -f "$ROOT/deploy/injector/namespace.yaml"
  if kc -n "$INJECTOR_NS" get secret mcp-sidecar-injector-tls >/dev/null 2>&1; then
    echo "TLS secret exists, reusing it"
  else
    local certs
    certs=$(mktemp -d)
    "$ROOT/deploy/kind/webhook-cert.sh" "$certs" mcp-sidecar-injector "$INJECTOR_NS"
    # A kubernetes.io/tls Secret that also keeps ca.crt (the caBundle, read back below).
    kc -n "$INJECTOR_NS" create secret generic mcp-sidecar-injector-tls \
      --type=kubernetes.io/tls \
      --from-file=tls.crt="$certs/tls.crt" \
      --from-file=tls.key="$certs/tls.key" \
      --from-file=ca.crt="$certs/ca.crt"
    rm -rf "$certs"
  fi
  local restart
  restart=$(existing_deployments "$INJECTOR_NS" mcp-sidecar-injector)
  kc apply -k "$ROOT/deploy/injector"
  if [[ -n $restart ]]; then
    kc -n "$INJECTOR_NS" rollout restart deployment/mcp-sidecar-injector
  fi
  local ca_bundle
  ca_bundle=$(kc -n "$INJECTOR_NS" get secret mcp-sidecar-injector-tls -o jsonpath='{.data.ca\.crt}')
  [[ -n $ca_bundle ]] || die "secret mcp-sidecar-injector-tls has no ca.crt"
  kc patch mutatingwebhookconfiguration mcp-sidecar-injector --type=json -p \
    "[{\"op\":\"add\",\"path\":\"/webhooks/0/clientConfig/caBundle\",\"value\":\"${ca_bundle}\"},{\"op\":\"add\",\"path\":\"/webhooks/1/clientConfig/caBundle\",\"value\":\"${ca_bundle}\"}]"
  kc -n "$INJECTOR_NS" rollout status deployment/mcp-sidecar-injector --timeout="$TIMEOUT"
}

deploy_demo() {
  step "Deploying the demo (math MCP server, agent)"
  local restart
  restart=$(existing_deployments "$DEMO_NS" math agent)
  kc apply -k "$ROOT/deploy/demo"
  if [[ -n $restart ]]; then
    # shellcheck disable=SC2086 # one word per deployment
    kc -n "$DEMO_NS" rollout restart $restart
  fi
  kc -n "$DEMO_NS" rollout status deployment/math --timeout="$TIMEOUT"
  kc -n "$DEMO_NS" rollout status deployment/agent --timeout="$TIMEOUT"
}

smoke_agent() {
  step "Smoke check 1/2: the agent calls add and multiply through the mesh"
  local deadline ok_lines count
  deadline=$((SECONDS + $(seconds "$TIMEOUT")))
  while :; do
    ok_lines=$(kc -n "$DEMO_NS" logs deployment/agent -c agent --tail=200 2>/dev/null |
      grep -E ' ok +(add|multiply)\(' || true)
    count=$(printf '%s' "$ok_lines" | grep -c . || true)
    if ((count >= 4)); then
      break
    fi
    if ((SECONDS >= deadline)); then
      kc -n "$DEMO_NS" logs deployment/agent -c agent --tail=20 >&2 || true
      kc -n "$DEMO_NS" logs deployment/agent -c mcp-sidecar --tail=20 >&2 || true
      die "no successful tool calls from the agent (docs/kubernetes.md, Troubleshooting)"
    fi
    sleep 5
  done
  printf '%s\n' "$ok_lines" | tail -n 4
}

smoke_rogue() {
  step "Smoke check 2/2: a workload outside the allowlist is refused"
  kc -n "$DEMO_NS" delete job rogue --ignore-not-found --wait=true
  kc apply -k "$ROOT/deploy/demo/rogue"
  local deadline state=""
  deadline=$((SECONDS + $(seconds "$TIMEOUT")))
  while :; do
    state=$(kc -n "$DEMO_NS" get job rogue -o jsonpath='{.status.succeeded}/{.status.failed}')
    case $state in
      1/*) break ;;
      */[1-9]*)
        kc -n "$DEMO_NS" logs job/rogue -c rogue >&2 || true
        die "the rogue workload was not refused as expected"
        ;;
    esac
    if ((SECONDS >= deadline)); then
      kc -n "$DEMO_NS" describe job rogue >&2 || true
      die "the rogue Job did not finish"
    fi
    sleep 3
  done
  kc -n "$DEMO_NS" logs job/rogue -c rogue | grep -E ' refused ' || die "no refusal in the rogue's log"
}

main() {
  check_prerequisites
  create_cluster
  build_image
  install_spire
  install_injector
  deploy_demo
  smoke_agent
  smoke_rogue
  step "Done"
  cat <<INFO
The mesh is up (kubectl context ${CONTEXT}):
  kubectl --context ${CONTEXT} -n ${DEMO_NS} logs -f deployment/agent -c agent          # the agent's calls
  kubectl --context ${CONTEXT} -n ${DEMO_NS} logs deployment/math -c mcp-sidecar        # the server sidecar's access log
  kubectl --context ${CONTEXT} -n ${DEMO_NS} port-forward deployment/math 15000:15000   # then: curl localhost:15000/metrics
Remove everything with deploy/kind/down.sh.
INFO
}

main "$@"
