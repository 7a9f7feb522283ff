"""This process as one member of the replicas of a share: it joins, renews its lease, knows the
others (coord/), and keeps the shared session state for `Sessions` (`latest`, `change`).

Start (`join`, a start-up step tried again while storage is away):
    1. the control container: created if missing (APP_AZURE_CREATE_CONTAINER), or looked at
    2. today's `sessions.json` imported, create-only: of replicas that start together one
       imports, the others find the state there; the file is then set aside (`.imported-<ns>`)
       so that a later single replica does not take a state that moved on
    3. the member blob created and its lease taken (coord/member: its own thread from then
       on); renewals only while `healthy`: this member's own NFS probe went through lately
    4. the roster read once (the first listing and the state), then every ROSTER_EVERY_S in
       a thread of its own

A lost incarnation (its lease taken, its blob adopted or removed) is told to `on_lost` on the
event loop: the service exits (status 75) and comes back as a new incarnation.

Every blocking call (the SDK's synchronous client) runs in a thread: nothing here waits on the
network on the event loop.
"""

import asyncio
import logging
import os
import time
from collections.abc import Callable
from pathlib import Path

import anyio.to_thread
from azure.core.exceptions import ResourceNotFoundError

from nfs_watcher_uploader.blob.blobinfo import uploader_version
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.constants import MAX_ABANDONED_THREADS, STATE_FILE, STATE_FILE_MAX
from nfs_watcher_uploader.coord.client import ensure_container
from nfs_watcher_uploader.coord.constants import RENEW_EVERY_S
from nfs_watcher_uploader.coord.coordinator import Coordinator
from nfs_watcher_uploader.coord.errors import STORAGE_ERRORS, ControlRefused, classify
from nfs_watcher_uploader.coord.member import Member
from nfs_watcher_uploader.coord.names import control_container_name
from nfs_watcher_uploader.coord.shared_state import Change, SharedState
from nfs_watcher_uploader.coord.statedoc import StateDoc
from nfs_watcher_uploader.errors import CannotStart
from nfs_watcher_uploader.nfs.reading import (
    Unusable,
    read_regular,
    set_aside,
    set_aside_or_leave,
)
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.replicas.control import MakeClient, make_control_client

logger = logging.getLogger(__name__)

# The NFS probe counts as healthy this long after it last went through: two renew periods, so
# one slow stat does not drop the member, a hung mount does within ~10 s.
HEALTHY_FOR_S = 2 * RENEW_EVERY_S


class Membership:
    """This process's membership; `member` and `coordinator` exist once `join` went through."""

    def __init__(
        self,
        settings: Settings,
        incarnation: str,
        nfs: Nfs,
        own_root: Path,
        on_lost: Callable[[str], None],
    ) -> None:
        self.settings = settings
        self.incarnation = incarnation
        self.nfs = nfs
        self.own_root = own_root
        self.container = control_container_name(
            settings.azure_container, settings.azure_control_container
        )
        self._on_lost = on_lost
        self._loop: asyncio.AbstractEventLoop | None = None
        self.make_client: MakeClient | None = None
        self.member: Member | None = None
        self.coordinator: Coordinator | None = None
        self.imported = False
        self._joined = False
        # When this member's own NFS probe last went through (monotonic).
        self._nfs_ok_at = float("-inf")

    def __repr__(self) -> str:
        return f"Membership({self.incarnation} {self.member!r} {self.coordinator!r})"

    # --- start ------------------------------------------------------------------------------

    async def join(self, auth_used: str | None) -> None:
        """Steps 1 to 4 of the module docstring; each done once, so that a retry goes on where
        the last try stopped. Raises CannotStart for what cannot heal, IncarnationLost (start
        over as a new incarnation), and coord's ControlUnavailable (try again later)."""
        self._loop = asyncio.get_running_loop()
        make = self.client_maker(auth_used)
        try:
            if self.member is None:
                await anyio.to_thread.run_sync(self._container, make)
                await self._import(make)
                await self.probe_nfs()
                # One Member through every try: a join whose answer was lost is tried again
                # by the same object (coord/member).
                self.member = Member(
                    make(),
                    host=self.settings.member_name,
                    version=uploader_version(),
                    incarnation=self.incarnation,
                    healthy=self.healthy,
                    on_lost=self._lost_in_thread,
                )
            member = self.member
            if not self._joined:
                await anyio.to_thread.run_sync(member.join)
                member.start()
                self._joined = True
            if self.coordinator is None:
                coordinator = Coordinator(member, make)
                await anyio.to_thread.run_sync(coordinator.iteration)
                coordinator.start()
                self.coordinator = coordinator
        except ControlRefused as exc:
            raise CannotStart(f"the control container {self.container}: {exc}") from None
        logger.info(
            "Member %s of the replicas on this share (control container %s)",
            self.incarnation,
            self.container,
        )

    def client_maker(self, auth_used: str | None) -> MakeClient:
        """The maker of control clients (with the data credential); CannotStart when that
        credential cannot reach the control container and no setting gives one that can."""
        if self.make_client is None:
            self.make_client = make_control_client(self.settings, self.container, auth_used)
        return self.make_client

    def _container(self, make: MakeClient) -> None:
        """Create the control container (APP_AZURE_CREATE_CONTAINER), or make sure it is there
        by listing it, which every member does anyway (a container SAS may list, not look at
        the container itself). Raises ControlRefused or CannotStart when no waiting helps."""
        client = make()
        if self.settings.azure_create_container:
            try:
                ensure_container(client)
                return
            except ControlRefused:  # may not create containers: it may still be there
                pass
        try:
            next(iter(client.list_blobs(results_per_page=1).by_page()), None)
        except ResourceNotFoundError:
            raise CannotStart(
                f"the control container {self.container} does not exist and may not be "
                "created with this credential (or APP_AZURE_CREATE_CONTAINER=false): create "
                "it, or name another with APP_AZURE_CONTROL_CONTAINER"
            ) from None
        except STORAGE_ERRORS as exc:
            raise classify(exc, f"listing the control container {self.container}") from None

    async def _import(self, make: MakeClient) -> None:
        """Today's sessions.json into the shared state (create-only), then set aside."""
        path = self.settings.nfs_processing_root / STATE_FILE
        root = self.settings.nfs_processing_root
        try:
            raw = await self.nfs.call(lambda: read_regular(path, STATE_FILE_MAX))
        except Unusable as exc:  # nothing of ours to import (nfs/reading)
            done = await self.nfs.call(lambda: set_aside_or_leave(path, root))
            logger.error("Session state %s not imported: unusable (%s); %s", path, exc, done)
            return
        if raw is None:
            return
        shared = SharedState(make())
        self.imported = await anyio.to_thread.run_sync(shared.import_local, raw)
        aside = await self.nfs.call(lambda: set_aside(path, "imported"))
        logger.warning(
            "Session state %s %s the shared state; kept as %s (README: Running N replicas)",
            path,
            "imported into" if self.imported else "not imported: another replica made",
            aside,
        )

    # --- health: renew only while this member's NFS answers ---------------------------------

    async def probe_nfs(self) -> None:
        """One look at this member's own tree on NFS (with the NFS deadline)."""
        root = self.own_root
        await self.nfs.call(lambda: os.makedirs(root, exist_ok=True))
        self._nfs_ok_at = time.monotonic()

    async def run_probe(self) -> None:
        """Probe NFS every RENEW_EVERY_S until cancelled."""
        while True:
            try:
                await self.probe_nfs()
            except OSError as exc:
                logger.warning("NFS probe of %s failed: %s", self.own_root, exc)
            await asyncio.sleep(RENEW_EVERY_S)

    def healthy(self) -> bool:
        """Called by the renewing thread: renew only while NFS answers this member."""
        fresh = time.monotonic() - self._nfs_ok_at < HEALTHY_FOR_S
        return fresh and self.nfs.abandoned < MAX_ABANDONED_THREADS

    # --- what the service asks (from memory, no I/O) -----------------------------------------

    def valid(self) -> bool:
        return self._joined and self.member is not None and self.member.valid()

    def take(self, session: str, rel: str, stable_for: float) -> bool:
        """Should this member claim the file now? Its own by rendezvous, or any file that has
        stayed unchanged past APP_STEAL_AFTER_S (its member may be stuck)."""
        coordinator = self.coordinator
        if coordinator is None or not self.valid():
            return False
        if stable_for >= self.settings.steal_after_s:
            return True
        return coordinator.may_claim(session, rel)

    def live_members(self) -> int:
        view = self.coordinator.view if self.coordinator is not None else None
        return len(view.live_names()) if view is not None else 1

    # --- the shared session state (Sessions' SharedStore) ------------------------------------

    def latest(self) -> StateDoc | None:
        snapshot = self.coordinator.snapshot if self.coordinator is not None else None
        return None if snapshot is None else snapshot.doc

    async def change(self, rule: Change) -> StateDoc:
        coordinator = self.coordinator
        if coordinator is None:
            raise RuntimeError("not joined yet")
        snapshot = await anyio.to_thread.run_sync(coordinator.change, rule)
        return snapshot.doc

    # --- lost, and leaving --------------------------------------------------------------------

    def _lost_in_thread(self, why: str) -> None:
        loop = self._loop
        if loop is not None and not loop.is_closed():
            loop.call_soon_threadsafe(self._on_lost, why)

    async def leave(self, delete: bool) -> None:
        """Stop the roster loop, write the last counters, then release the lease (or delete
        the blob, when nothing of this member is left on NFS)."""
        coordinator, member = self.coordinator, self.member
        if coordinator is not None:
            await anyio.to_thread.run_sync(coordinator.stop)
        if member is not None:
            await anyio.to_thread.run_sync(member.leave, delete)
