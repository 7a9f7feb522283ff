"""What one replica knows of the others, kept fresh by a thread of its own, and the questions
the service asks of it without waiting on the network.

    run        every ROSTER_EVERY_S: one listing (roster.py); the state blob is read again
               only when the listing shows that its ETag changed
    may_claim  this member is valid and rendezvous gives it the file, by the last listing:
               answered from memory, so that the check and the claim's rename can sit
               together with no `await` between them
    adopt      the orphans of the last listing, once this member is steady
    change     a session rule applied to the shared state (compare-and-swap), its result
               kept as the state this replica knows

A state blob that cannot be read as a state (damaged, or deleted by hand after it was read
whole) does not make this replica forget its sessions: `snapshot` stays the last state read
whole, `state_problem` says what is wrong, and the next `change` (the leader makes one at once:
`repair`) writes from that state.

At rest a replica sends LEASE_S/RENEW_EVERY_S renews and 60/ROSTER_EVERY_S listings a minute:
12 + 24 = 36 control requests (tests/coord count them on the wire). Three clients, so that
no thread shares an HTTP session with another: the member's, the loop's, and one (under a
lock) for the writes the service asks for.
"""

import logging
import threading
import time
from collections.abc import Callable

from azure.storage.blob import ContainerClient

from nfs_watcher_uploader.coord.constants import ROSTER_EVERY_S
from nfs_watcher_uploader.coord.errors import CoordError, redact
from nfs_watcher_uploader.coord.member import Member
from nfs_watcher_uploader.coord.roster import MemberRecord, Roster, View
from nfs_watcher_uploader.coord.shared_state import Change, SharedState, Snapshot

logger = logging.getLogger(__name__)


class Coordinator:
    """`make_client` makes a control client (client.py); `member` has joined."""

    def __init__(
        self,
        member: Member,
        make_client: Callable[[], ContainerClient],
        every_s: float = ROSTER_EVERY_S,
    ) -> None:
        self.member = member
        self.every_s = every_s
        loop_client, act_client = make_client(), make_client()
        self._roster, self._state = Roster(loop_client), SharedState(loop_client)
        self._act_roster, self._act_state = Roster(act_client), SharedState(act_client)
        self._acting = threading.Lock()
        self._lock = threading.Lock()
        self._view: View | None = None
        # Raised at each listing: a waiter (the service's adoption) acts on each one once.
        self.listings = 0
        self._snapshot: Snapshot | None = None  # the last state read (or written) whole
        self._read_etag: str | None = None  # the ETag of the blob as last read
        self.state_problem: str | None = None
        self.last_error: str | None = None
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        view = self._view
        live = len(view.live_names()) if view else "?"
        return (
            f"Coordinator(me={self.member.incarnation[:8]} live={live} "
            f"leader={self.is_leader()} {self._roster!r} error={self.last_error!r})"
        )

    @property
    def requests(self) -> int:
        """Control requests this replica sent, all clients together."""
        return (
            self.member.requests
            + self._roster.requests
            + self._state.reads
            + self._state.writes
            + self._act_roster.requests
            + self._act_state.reads
            + self._act_state.writes
        )

    @property
    def view(self) -> View | None:
        with self._lock:
            return self._view

    @property
    def snapshot(self) -> Snapshot | None:
        with self._lock:
            return self._snapshot

    # --- the loop ---------------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self.run, name="coordinator", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def run(self) -> None:
        while not self._stop.is_set():
            started = time.monotonic()
            try:
                self.iteration()
                self.last_error = None
            except CoordError as exc:
                if self.last_error != str(exc):
                    logger.warning("Roster not read: %s", exc)
                self.last_error = str(exc)
            except Exception as exc:  # a bug: said once, and the loop goes on
                # /v1/status shows it: a library's text may hold a URL with its SAS.
                text = redact(repr(exc))
                if self.last_error != text:
                    logger.exception("Roster not read")
                self.last_error = text
            self._stop.wait(max(0.0, self.every_s - (time.monotonic() - started)))

    def iteration(self) -> View:
        """One listing; the state read again if it changed. Raises CoordError."""
        view = self._roster.read()
        with self._lock:
            known, read_etag = self._snapshot, self._read_etag
        if known is None or view.state_etag != read_etag:
            snapshot = self._state.read()
            self._take(snapshot, known)
        with self._lock:
            self._view = view
            self.listings += 1
        return view

    def _take(self, snapshot: Snapshot, known: Snapshot | None) -> None:
        """Keep `snapshot` as the state, unless it cannot be a state while a whole one is
        known (then keep that, and say why), or a change of ours came in meanwhile."""
        problem = snapshot.damaged
        if problem is None and snapshot.etag is None and known is not None and known.etag:
            problem = f"the session state blob was removed (last generation {known.doc.generation})"
        if problem is None and known is not None and snapshot.doc.generation < known.doc.generation:
            # Every write raises the generation: a lower one is an older state put back by
            # hand (a restored copy), never a newer write.
            problem = (
                f"the session state blob went back from generation {known.doc.generation} "
                f"to {snapshot.doc.generation} (an older copy put back)"
            )
        with self._lock:
            self._read_etag = snapshot.etag
            self.state_problem = problem if known is not None else snapshot.damaged
            if self._snapshot is not known:
                return  # a change of ours came in meanwhile
            if problem is None or known is None:
                self._snapshot = snapshot

    # --- questions answered from memory -------------------------------------------------------

    def may_claim(self, session: str, rel: str) -> bool:
        """Whether this member should claim the file now (see rendezvous.py)."""
        view = self.view
        me = self.member.incarnation
        return self.member.valid() and view is not None and view.owner_of(session, rel) == me

    def is_leader(self) -> bool:
        view = self.view
        return self.member.valid() and view is not None and view.leader() == self.member.incarnation

    # --- writes the service asks for (blocking: from a worker thread) -------------------------

    def adopt(self) -> list[MemberRecord]:
        """Adopt the orphans of the last listing, if this member is steady; the ones won."""
        view = self.view
        if view is None or not self.member.steady():
            return []
        won: list[MemberRecord] = []
        with self._acting:
            for orphan in view.orphans(self.member.incarnation):
                if not self.member.steady():
                    break
                adopted = self._act_roster.adopt(orphan, self.member.incarnation)
                if adopted is not None:
                    won.append(adopted)
        return won

    def remove(self, record: MemberRecord) -> bool:
        with self._acting:
            return self._act_roster.remove(record)

    def change(self, rule: Change) -> Snapshot:
        """Apply `rule` to the shared state (see shared_state.update) and keep the result."""
        with self._lock:
            known = self._snapshot
        fallback = known.doc if known is not None and known.etag else None
        with self._acting:
            snapshot = self._act_state.update(rule, fallback)
        with self._lock:
            self._snapshot = snapshot
            self._read_etag = snapshot.etag
            self.state_problem = None
        return snapshot

    def repair(self) -> bool:
        """Write the state back from the last one read whole when the blob is damaged or was
        removed (the leader calls it). True when it did."""
        if self.state_problem is None or self.snapshot is None:
            return False
        logger.error(
            "%s; writing it back from generation %d",
            self.state_problem,
            self.snapshot.doc.generation,
        )
        self.change(lambda doc: doc)
        return True
