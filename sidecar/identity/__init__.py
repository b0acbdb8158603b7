"""Where identities come from: the SPIFFE Workload API client and the embedded dev Workload API."""
