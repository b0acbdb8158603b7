"""Strict, I/O-free HTTP/1.1 parsing: message heads (RFC 9112) and chunked bodies."""
