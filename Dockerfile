# mcp-sidecar image: the sidecar (`mcp-sidecar run`), the injector (`mcp-sidecar webhook`) and the
# demo workloads (`python -m sidecar.demo.mcp_server`, `python -m sidecar.demo.agent_loop`).
#
#   docker build -t mcp-sidecar:dev .
#
# Runs as the numeric non-root user 10001 (so `runAsNonRoot` can be verified), writes nothing to
# its filesystem (works with readOnlyRootFilesystem: true) and has no HEALTHCHECK: Kubernetes
# probes the admin listener's /healthz and /readyz instead. docs/kubernetes.md has the checklist
# this file is reviewed against.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

# --- build: install the project and its dependencies into a virtualenv ------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
RUN python -m venv /opt/mcp-sidecar
COPY pyproject.toml README.md ./
COPY sidecar ./sidecar
# with the tracing extra (OpenTelemetry SDK + OTLP exporter): imported only when tracing is on
RUN /opt/mcp-sidecar/bin/pip install --no-cache-dir '.[tracing]' \
    && /opt/mcp-sidecar/bin/python -m compileall -q /opt/mcp-sidecar/lib

# --- runtime: the virtualenv on a clean base, no build tools, no pip cache ---------------------
FROM ${PYTHON_IMAGE} AS runtime
LABEL org.opencontainers.image.title="mcp-sidecar" \
      org.opencontainers.image.description="SPIFFE mTLS sidecar for AI agents and MCP servers" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN groupadd --system --gid 10001 mcp \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mcp
COPY --from=build /opt/mcp-sidecar /opt/mcp-sidecar
ENV PATH=/opt/mcp-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
USER 10001:10001
# 8443 inbound (mTLS), 15001 outbound (loopback), 15000 admin, 9443 injector webhook.
EXPOSE 8443 15000 15001 9443
ENTRYPOINT ["mcp-sidecar"]
CMD ["--help"]
