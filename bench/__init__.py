"""Benchmarks: our sidecar pair against an Envoy pair and the bare upstream (``python -m bench``).

Not part of the installed package: run it from a checkout (``make bench``). See bench/README.md.
"""
