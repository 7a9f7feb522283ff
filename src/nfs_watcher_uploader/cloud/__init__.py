"""What a consumer in the cloud gets besides the bytes: ledger, manifest, events, verify.

ledger     one line per committed blob, per session, on NFS
manifest   the session manifest's format (shared by reports and verify)
reports    a session's end: its manifest, then its event
webhooks   events, delivered at least once from an outbox on NFS
jobs       durable jobs on NFS (reports, outbox)
delivery   builds ledger, blob labels and webhooks from the settings
retention  ledgers removed once their manifest is in storage and their days have passed
verify     the `verify` command: a session in storage against its manifest
"""
