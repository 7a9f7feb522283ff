"""The names, durations and limits of coordination through the control container, each with the
reason it has its value."""

# --- Leases and validity -------------------------------------------------------------------
# The member blob's lease. Azure allows 15 to 60 s (or infinite): the shortest gives the
# quickest adoption of a member that died.
LEASE_S = 15
# Renewed three times per lease: two renews in a row may fail (a blip) before validity ends.
RENEW_EVERY_S = 5.0
# After a renew that failed for a reason that may pass (timeout, 5xx, throttling), the next
# try comes this much sooner than the next regular renew.
RENEW_RETRY_S = 1.0
# One control request may take at most this long to connect and this long to answer: a renew
# that hangs must not outlive the validity it is meant to extend (2 + 3 < RENEW_EVERY_S).
CONNECT_TIMEOUT_S = 2.0
READ_TIMEOUT_S = 3.0

# --- The roster ----------------------------------------------------------------------------
# One listing of the control container this often: a member that died is seen dead at most
# this long after its lease ran out (15 s + 2.5 s, within the 20 s allowed for adoption with
# room for a busy machine: 3 s measured 18.0 s), and 24 listings a minute keep a replica at
# rest under 40 control requests a minute (12 renews + 24 listings = 36; see README
# "Running N replicas").
ROSTER_EVERY_S = 2.5
# Progress counters are written into the member blob at most this often, and only when they
# changed: 6 writes a minute at most, so a busy replica stays near the same budget.
PROGRESS_EVERY_S = 10.0

# --- Blob names in the control container -----------------------------------------------------
MEMBERS_PREFIX = "members/"
STATE_BLOB = "state/sessions.json"
# A state blob that could not be read as a state is copied here (create-only) before it is
# replaced, so that an operator can look at what it held.
DAMAGED_PREFIX = "damaged/"
CONTROL_SUFFIX = "-ctl"

# --- Member blob metadata (keys must be C# identifiers: Azure sends them as headers) ---------
META_HOST = "host"
META_VERSION = "version"
META_PROGRESS = "progress"
META_ADOPTED_BY = "adoptedby"
META_ADOPTED_AT = "adoptedat"
# A host name or version longer than this is cut (it only labels the member in /v1/status).
META_LABEL_MAX = 128
# Progress is one compact JSON value: a blob's metadata may hold 8 KiB in all.
PROGRESS_MAX_BYTES = 4096
# Counter values are whole numbers below this (a bigger one is not ours).
COUNTER_MAX = 2**53

# --- Reading back what anyone with write access to the control container may have written ---
# The state document of 200 drained sessions and a few watched ones is ~50 KiB.
STATE_MAX_BYTES = 1024 * 1024
# Nesting depth of the state document: {"sessions": [{...}]} is 3.
JSON_MAX_DEPTH = 8
# Members listed at most (a listing beyond it is not ours to act on; it is reported).
MEMBERS_MAX = 256
# A compare-and-swap that keeps losing its race gives up after this many tries (the caller
# answers 503 and the client may try again).
CAS_TRIES = 50
