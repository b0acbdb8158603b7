"""Pure SPIFFE rules: IDs, X509-SVID verification per trust domain, allowlist matching. No I/O."""
