# mcp-sidecar images, built from the hash-pinned locks in requirements/ (see its README):
#
#   docker build -t mcp-sidecar:dev .                                  # runtime: run + webhook
#   docker build --target demo -t mcp-sidecar-demo:dev .               # + the demo workloads
#
# The default target (`runtime`, the last stage) runs the sidecar (`mcp-sidecar run`) and the
# injector (`mcp-sidecar webhook`) and holds only the runtime dependencies and the tracing extra
# (imported only when tracing is on): no MCP SDK, no pip, no setuptools. The `demo` target
# adds the `demo` extra for the demo workloads
# (`python -m sidecar.demo.mcp_server`, `python -m sidecar.demo.agent_loop`).
#
# Both run as the numeric non-root user 10001 (so `runAsNonRoot` can be verified), write nothing
# to their filesystem (work with readOnlyRootFilesystem: true) and have no HEALTHCHECK:
# Kubernetes probes the admin listener's /healthz and /readyz instead. docs/kubernetes.md has
# the checklist this file is reviewed against.
#
# The base image is pinned by the digest of its multi-platform index, so a moved tag cannot
# change what we build on. To bump it: read the tag's current index digest, e.g.
#   docker buildx imagetools inspect python:3.11-slim-bookworm   (the "Digest:" line)
# replace the digest below, build both targets and run deploy/kind/up.sh (its smoke check);
# docs/kubernetes.md, "Image", says more.
ARG PYTHON_IMAGE=python:3.11-slim-bookworm@sha256:528257d48c1da0dcecc2e725d1ae34498d60c965f1241e39cd6a85a8859bdf84

# --- build: the runtime virtualenv, from requirements/tracing.lock ----------------------------
FROM ${PYTHON_IMAGE} AS build
ENV PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PYTHONDONTWRITEBYTECODE=1
WORKDIR /src
COPY requirements ./requirements
COPY pyproject.toml README.md LICENSE ./
COPY sidecar ./sidecar
# /opt/build: pip and the pinned build backend, to make our wheel. /opt/mcp-sidecar: a venv
# without pip, filled by /opt/build's pip (`--python`); every third-party package comes from the
# lock with its hash, our own wheel without dependencies. The tracing extra (OpenTelemetry SDK +
# OTLP exporter, its own lock) is imported only when tracing is on.
RUN python -m venv /opt/build \
    && /opt/build/bin/pip install --no-cache-dir --require-hashes --no-deps \
       -r requirements/build.lock \
    && /opt/build/bin/pip wheel --no-cache-dir --no-deps --no-build-isolation \
       --wheel-dir /wheels . \
    && python -m venv --without-pip /opt/mcp-sidecar \
    && /opt/build/bin/pip --python /opt/mcp-sidecar/bin/python install --no-cache-dir \
       --require-hashes --no-deps -r requirements/tracing.lock \
    && /opt/build/bin/pip --python /opt/mcp-sidecar/bin/python install --no-cache-dir \
       --no-deps /wheels/mcp_sidecar-*.whl \
    && /opt/mcp-sidecar/bin/python -m compileall -q /opt/mcp-sidecar/lib

# --- build-demo: the same virtualenv plus the demo extra, from requirements/demo.lock ---------
FROM build AS build-demo
RUN /opt/build/bin/pip --python /opt/mcp-sidecar/bin/python install --no-cache-dir \
       --require-hashes --no-deps -r requirements/demo.lock \
    && /opt/mcp-sidecar/bin/python -m compileall -q /opt/mcp-sidecar/lib

# --- base: the clean interpreter both images share; its own pip and setuptools removed --------
FROM ${PYTHON_IMAGE} AS base
LABEL org.opencontainers.image.title="mcp-sidecar" \
      org.opencontainers.image.description="SPIFFE mTLS sidecar for AI agents and MCP servers" \
      org.opencontainers.image.licenses="Apache-2.0"
RUN python -m pip uninstall --yes --quiet pip setuptools wheel \
    && groupadd --system --gid 10001 mcp \
    && useradd --system --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
       --shell /usr/sbin/nologin mcp
ENV PATH=/opt/mcp-sidecar/bin:$PATH \
    PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1
# 8443 inbound (mTLS), 15001 outbound (loopback), 15000 admin, 9443 injector webhook.
EXPOSE 8443 15000 15001 9443

# --- demo: runtime + the demo workloads (`--target demo`) -------------------------------------
FROM base AS demo
COPY --from=build-demo /opt/mcp-sidecar /opt/mcp-sidecar
USER 10001:10001
ENTRYPOINT ["mcp-sidecar"]
CMD ["--help"]

# --- runtime (default): the sidecar and the injector, runtime dependencies only ---------------
FROM base AS runtime
COPY --from=build /opt/mcp-sidecar /opt/mcp-sidecar
USER 10001:10001
ENTRYPOINT ["mcp-sidecar"]
CMD ["--help"]
