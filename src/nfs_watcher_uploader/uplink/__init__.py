"""The uplink: the bandwidth cap and every byte that goes over the wire to storage."""
