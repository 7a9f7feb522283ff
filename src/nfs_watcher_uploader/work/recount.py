"""Session counters after a restart, read back from what is durable: the ledger (one line per
committed blob) and the parked files. So `/v1/sessions/{name}` says after a restart what the
session's manifest says: `uploaded` and `bytes_uploaded` are the ledger's blobs (each once,
as the manifest lists them), `dismissed` the parked files an operator took out (the ledger's
dismissal lines, each once), `failed` its parked files (counted by `recovery`).

Files still in progress at the restart are uploaded again; those whose blob already has its
line (committed and recorded before the crash) are marked on the session, so that finding
them already in storage does not count them twice (`Session.restore`). With APP_MANIFEST=off
there is no ledger, and the counters start from zero.
"""

import logging

from nfs_watcher_uploader.cloud.ledger import Ledger
from nfs_watcher_uploader.items import WorkItem
from nfs_watcher_uploader.nfs.runner import Nfs
from nfs_watcher_uploader.sessions.registry import Sessions
from nfs_watcher_uploader.sessions.session import Session

logger = logging.getLogger(__name__)


async def recount(
    sessions: Sessions, ledger: Ledger | None, recovered: list[WorkItem], nfs: Nfs
) -> None:
    """Restore each known session's counters; `recovered` are the files left in progress."""
    if ledger is None:
        return
    for session in list(sessions.by_name.values()):
        try:
            await _recount(session, ledger, recovered, nfs)
        except OSError as exc:  # counters are worth a line, never a start-up
            logger.warning(
                "Session %s: cannot read its ledger (%s); its counters start from zero",
                session.name,
                exc,
                extra={"session_name": session.name},
            )


async def _recount(session: Session, ledger: Ledger, recovered: list[WorkItem], nfs: Nfs) -> None:
    date, name = session.date_prefix, session.name
    record = await nfs.call(lambda: ledger.read_all(date, name), timeout=nfs.timeout * 10)
    entries, dismissed = record.files, record.dismissed
    mine = [i for i in recovered if (i.session_name, i.date_prefix) == (name, date)]
    paths = {i.rel for i in mine if not i.completed}
    blobs = {i.blob_name for i in mine if i.completed}
    restored = {e.blob: e.size for e in entries if e.path in paths or e.blob in blobs}
    recorded = {e.path for e in entries}
    pending = sum(1 for i in mine if not i.completed and i.rel not in recorded)
    session.restore(
        len(entries), sum(e.size for e in entries), pending, restored, dismissed=len(dismissed)
    )
