"""SSL contexts built from identity snapshots, swapped atomically on rotation."""
