#!/usr/bin/env bash
# Delete the kind cluster that deploy/kind/up.sh created (and everything in it).
#
#   deploy/kind/down.sh
#
# Environment: CLUSTER_NAME (default mcp-sidecar), as for up.sh.
set -euo pipefail

CLUSTER_NAME=${CLUSTER_NAME:-mcp-sidecar}

command -v kind >/dev/null 2>&1 || {
  echo "error: kind is not installed" >&2
  exit 1
}
if kind get clusters 2>/dev/null | grep -qx "$CLUSTER_NAME"; then
  kind delete cluster --name "$CLUSTER_NAME"
else
  echo "no kind cluster named ${CLUSTER_NAME}"
fi
