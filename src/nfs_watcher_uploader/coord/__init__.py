"""Coordination of N replicas on one NFS export through Azure Storage's own primitives
(APP_COORDINATION=azure): member blobs with leases, a roster read by listing, rendezvous
hashing of files to members, and the session state as one blob changed by compare-and-swap.

Leases decide who *should* act; they fence nothing (a paused process does not know its lease
ran out). Safety stays where it is in single-replica mode: renames that never replace, and
blobs created only if absent.

Modules, each importing only from those above it (and from the package's base modules
`constants`, `errors` and `items`), which tests/coord/test_layering.py checks:

    constants     names, durations, limits
    errors        what goes wrong and what to do; secrets redacted
    fields        ETags and metadata values as storage takes them
    untrusted     JSON read back from the control container: size and depth first
    names         the control container's name, member blob names
    validity      a member's own validity (from the send time of its renews) and steadiness
    rendezvous    which live member a file goes to
    progress      counters in member metadata
    statedoc      the session state document
    transitions   the session rules, as changes of the document
    client        the control client: its own HTTP session, short timeouts, no retries
    member        join, renew (own thread), progress, leave; lost for good on 409
    roster        one listing: live, dead, leader, orphans; adoption and removal by ETag
    shared_state  compare-and-swap of the state blob; import of today's sessions.json
    coordinator   the roster loop and the questions the service asks of it
"""
