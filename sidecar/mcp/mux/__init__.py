"""Multiplexing several MCP servers ("targets") behind one endpoint, pure: how names and resource
URIs carry their target, how answers of several targets merge (capabilities, lists, pagination
cursors), how ids of server-to-client requests are rewritten so they never collide, and the
bounded table of client sessions. No I/O: ``sidecar.proxy.mux`` does the talking.
"""
