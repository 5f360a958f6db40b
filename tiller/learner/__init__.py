"""The learner: coordinator (leases, versions, staleness), DeepSpeed engine, pure losses, weight server."""
