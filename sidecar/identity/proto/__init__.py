"""Generated SPIFFE Workload API stubs (protobuf messages and the gRPC client/servicer), vendored
so that no private module of another package is imported; see README.md for the source and how
to regenerate them."""
