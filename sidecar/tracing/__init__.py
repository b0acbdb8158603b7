"""OpenTelemetry traces and log correlation.

Importing this package (or ``config``, ``settings``, ``correlation``) never imports
``opentelemetry``: the SDK is an optional extra, loaded by ``sidecar.tracing.sdk`` only when
tracing is on, so a sidecar with tracing off neither needs it nor pays for it.
"""
