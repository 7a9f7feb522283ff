"""What a consumer in the cloud gets besides the bytes: ledger, manifest, events, verify."""
