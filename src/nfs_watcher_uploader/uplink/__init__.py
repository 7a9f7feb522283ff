"""The uplink: the bandwidth cap and every byte that goes over the wire to storage.

bandwidth   the limit in force (override, schedule, setting) and the token bucket
wire        every request metered through the bucket, the proxy for each host, and the
            count of each file's bytes sent (its progress)
history     the uplink's rate over the last minutes
"""
