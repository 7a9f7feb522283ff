"""Names and limits that the rest of the package shares, each with the reason it has its value."""

import re

# Folders under APP_NFS_PROCESSING_ROOT. Claimed files live in `<YYYYMMDD>/<session>/`; every
# other top-level name starts with "_" so it can never be read as a date folder.
# A finished file is moved into COMPLETED_DIR (same relative path) rather than renamed with a
# suffix: a user's own file called "x.completed" must never be mistaken for a marker.
COMPLETED_DIR = "_completed"
# Files that cannot succeed by retrying are parked here, their reason in a parallel tree with the
# same relative path, so that no suffix is added to a name already at NAME_MAX.
PARKED_DIR = "_failed"
PARKED_REASONS_DIR = "_failed_reasons"
# Sessions (active, draining, recently drained) survive restarts in this file.
STATE_FILE = "sessions.json"
# With other replicas (APP_COORDINATION=azure) each process has a tree of its own below this
# folder, `owners/<incarnation>/`, laid out as a single replica lays out the processing root:
# a process renames only into its own tree, so no two ever race for one destination.
OWNERS_DIR = "owners"
# Written (create-only) by the first replica with APP_COORDINATION=azure: a process started
# with APP_COORDINATION=none on the same share refuses to start while it is there.
COORDINATION_FILE = "coordination"
# The key of block ids (block_ids.block_id), next to STATE_FILE, readable by its owner only.
BLOCK_KEY_FILE = "block-id.key"
BLOCK_KEY_BYTES = 32
# The uid an NFS server that squashes root gives root's files.
NOBODY_UID = 65534
STATE_TMP_PREFIX = ".sessions.json.tmp-"
# What a consumer in the cloud relies on, kept until it is in storage or delivered: a ledger of
# committed blobs per session (`<date>/<session>.jsonl`), sessions whose manifest and event are
# due, and webhook events not yet delivered (one file each, named by the event's id).
LEDGERS_DIR = "_ledgers"
LEDGER_SUFFIX = ".jsonl"
REPORTS_DIR = "_reports"
OUTBOX_DIR = "_outbox"
JOB_TMP_PREFIX = ".job.tmp-"
# The manifest of session s is the blob `<date>/s.manifest.json`, beside the folder `<date>/s/`.
MANIFEST_SUFFIX = ".manifest.json"
# Webhook events waiting at most: past this, new file events are dropped, each with an error
# line (a session's end is always kept).
OUTBOX_MAX = 10_000

# What the service cannot use among the files it reads back from the share (a link, a FIFO, a
# huge or damaged file) is moved here, under its own path, never over another file: a file set
# aside beside the others of its tree would be read again as one of them.
SET_ASIDE_DIR = "_set_aside"
# The most the service reads of each kind of file it reads back from the share: anything larger
# is not one of its own files (nor what a client of a small JSON file should load into memory).
STATE_FILE_MAX = 16 * 1024 * 1024  # sessions.json: about 200 bytes per session kept
SMALL_FILE_MAX = 64 * 1024  # bandwidth.json, a parked file's reason
JOB_FILE_MAX = 64 * 1024 * 1024  # a report job lists the session's excluded files
LEDGER_MAX = 1024 * 1024 * 1024  # a ledger: a few hundred bytes per file of the session
LEDGER_LINE_MAX = 64 * 1024  # one ledger line: a blob name and a path, escaped
TOKEN_FILE_MAX = 4 * 1024  # APP_API_TOKEN_FILE: one token
# A session end's generation is a time in microseconds: a ledger's manifest line further ahead
# of this device's clock than this is not ours, and is skipped (`reading.Generation`). Jobs and
# the state file are not held to it: a clock that starts behind must not set them aside.
GENERATION_AHEAD_MAX_S = 86_400.0
# JSON nested deeper than this is not ours (ours nest at most 4 levels), and is refused before
# a parser recurses into it.
JSON_DEPTH_MAX = 32
# Many small files read back (parked files' reasons, jobs) are read in batches, each one NFS
# call that stops after this share of the NFS deadline: however many there are, no call runs
# into its deadline (`Nfs.in_batches`).
BATCH_SHARE = 0.25
# Batches read at once: half the threads for short NFS calls (META_THREADS), the rest stays free
# for scans, claims and the API's own calls.
BATCH_READERS = 4

# Only ASCII digits: \d would also take other scripts' digits.
DATE_DIR_RE = re.compile(r"^[0-9]{8}$")

# The service's own folder under APP_LOCAL_STAGING_ROOT: start-up and GC clean only this one,
# so anything else on that disk is never touched.
STAGING_DIR = "nfs-watcher-uploader"

# Session names become folder names on NFS and path segments of blob names.
SESSION_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]+$")
SESSION_NAME_MAX = 128

# Azure block blob limits: https://learn.microsoft.com/rest/api/storageservices/put-block-list
MAX_BLOCKS = 50_000
MAX_BLOB_NAME = 1024
MAX_BLOB_PATH_SEGMENTS = 254

# How many ended sessions the API keeps reporting (they are persisted too, so a recorder that
# polls `drained` after a restart still gets its answer). A session with parked files, or with
# work in progress, is kept whatever their number: it still needs a person (or the service).
DRAINED_SESSIONS_KEPT = 200

# Copy chunk for NFS -> staging; matches the rsize/wsize of the k8s mount options.
COPY_CHUNK = 1024 * 1024

# Files below a session folder are uploaded with their relative path, down to this many levels
# (incoming/<s>/a/b/c/d/e/f/g/file is 8). Deeper folders are reported and block "drained".
MAX_DEPTH = 8

# Threads for short NFS calls (scan, rename, stat, state file), separate from the copies' own
# (one per worker), so that slow copies can never starve a scan, a stop or a probe.
META_THREADS = 8
# Calls abandoned at their deadline leave a thread blocked in the kernel until NFS answers.
# Past this many, new calls fail at once: a dead mount must not grow threads without end.
MAX_ABANDONED_THREADS = 32
# A session folder whose folders' attributes have not changed since it was last listed (and
# whose files are all too young to claim) is not listed again at each poll, but at least this
# often: on NFS a folder's attributes are cached (acdirmin/acdirmax; actimeo=5 in
# k8s/pv-nfs.yaml, 30-60 s by default) and may hide a new file that long, while a listing is
# always fresh. So a new file is seen within this (or the cache time, if shorter) plus a poll.
FULL_LIST_S = 10.0
# Short NFS calls that share one thread call at most (`Nfs.call_batched`): they run one after the
# other, so a batch's last call waits for the others (on NFS, a few round trips each).
MAX_BATCHED_CALLS = 16
# An NFS thread with nothing to do ends after this long (a burst of copies leaves no crowd).
THREAD_IDLE_EXIT_S = 10.0

# A file whose name is taken in storage by different bytes goes up as `<stem>~2<ext>`, `~3`...
CONFLICT_MARK = "~"
# Bytes in one file name on Linux filesystems (NFS included).
NAME_MAX = 255
MAX_NAME_VERSIONS = 1000
# upload.rate averages the bytes committed over this window: long enough to smooth the steps a
# file's commit makes, short enough to show a stall within a Prometheus scrape or two.
UPLOAD_RATE_WINDOW_S = 30.0

# The bandwidth cap (bandwidth.py, wire.py). The bucket holds this many seconds of the rate, so
# a pause is followed by no burst larger than that: the cap holds over short windows too.
BANDWIDTH_BURST_S = 0.1
# How often the schedule is read again: a boundary takes effect within this long.
BANDWIDTH_REFRESH_S = 0.25
# A request waiting for bandwidth says so this often (its worker is waiting, not stalled).
BANDWIDTH_WAIT_TICK_S = 1.0
# The override set through the API survives restarts in this file (next to STATE_FILE).
BANDWIDTH_FILE = "bandwidth.json"
BANDWIDTH_TMP_PREFIX = ".bandwidth.json.tmp-"
# A request body goes out in chunks that each take their tokens: small under a cap, so that 16
# uploads at once stay smooth; larger without one, where only a new cap needs to catch up.
CAPPED_CHUNK = 64 * 1024
UNCAPPED_CHUNK = 1024 * 1024
# What a request's line and headers add on the wire, beyond the ones we can count.
REQUEST_OVERHEAD = 200
# The measured send rate (GET /v1/bandwidth) is averaged over this window.
SEND_RATE_WINDOW_S = 5.0

# Files of at least this size are sent while they are read (early.py): each block goes out as
# soon as it was read from NFS and hashed. Below it, the whole copy takes milliseconds from a
# local disk, so there is nothing worth overlapping and the HEAD request first is saved.
OVERLAP_MIN_BYTES = 16 * 1024 * 1024
# The control API (auth.py, limits.py). A shorter token can be guessed; 32 hex digits cannot.
API_TOKEN_MIN_LENGTH = 16
# How often APP_API_TOKEN_FILE is read again: a rotated Secret takes effect within this (the
# kubelet itself takes up to a minute to update a mounted Secret).
API_TOKEN_RELOAD_S = 1.0
# The largest request body: every body of this API is a session name in JSON (~200 bytes).
MAX_REQUEST_BODY = 4 * 1024
# A request's head must arrive within this, its body within REQUEST_BODY_TIMEOUT_S; at most
# MAX_CONNECTIONS are open at once (each holds up to MAX_REQUEST_HEAD bytes of a head). Together
# they bound what slow or many clients can hold.
REQUEST_HEAD_TIMEOUT_S = 10.0
REQUEST_BODY_TIMEOUT_S = 10.0
MAX_CONNECTIONS = 64
MAX_REQUEST_HEAD = 16 * 1024
# Blob index tags (https://learn.microsoft.com/azure/storage/blobs/storage-manage-find-blobs):
# at most 10 per blob, keys up to 128 and values up to 256 of these characters. One is always
# `session`, so that lifecycle rules and queries can select a session's blobs.
MAX_TAGS = 10
TAG_KEY_MAX = 128
TAG_VALUE_MAX = 256
TAG_RE = re.compile(r"^[A-Za-z0-9 +\-./:=_]*$")
RESERVED_TAG = "session"
# APP_SOURCE_ID goes into blob metadata, an HTTP header: printable ASCII only.
SOURCE_ID_MAX = 256
# Azure's rules for container names (learn.microsoft.com/rest/api/storageservices/naming-and-
# referencing-containers--blobs--and-metadata): 3 to 63 lowercase letters, digits and single
# hyphens, starting and ending with a letter or a digit. `$root` and `$web` are Azure's own.
CONTAINER_NAME_MIN = 3
CONTAINER_NAME_MAX = 63
SPECIAL_CONTAINERS = frozenset({"$root", "$web"})
# How far apart this device's clock, storage's and the one a SAS was made on may be: Azure
# advises a SAS start time 15 minutes back for clock skew
# (learn.microsoft.com/azure/storage/common/storage-sas-overview, best practices). A SAS refused
# while its start time is closer than this may be valid later: start-up waits for it.
CLOCK_SKEW_S = 15 * 60.0
# The start-up probe (nfs/probe) renames a file of this name from incoming into processing and
# back. A dot name at the incoming root: the watcher only looks inside session folders, and the
# default excludes skip dot names anyway. A probe lasts a few NFS calls; one older than this
# was left by a run that died mid-probe (a younger one may be another replica's).
PROBE_PREFIX = ".nfs-watcher-uploader-probe-"
PROBE_STALE_S = 600.0
# Rates of files and sessions in flight (work/progress) are taken over this many seconds of the
# API's asks: long enough to smooth a block's steps, short enough to show a slowdown.
PROGRESS_RATE_WINDOW_S = 10.0
# The uplink's rate is kept for the status page's sparkline: one point per step, this many.
UPLINK_HISTORY_STEP_S = 5.0
UPLINK_HISTORY_POINTS = 120
