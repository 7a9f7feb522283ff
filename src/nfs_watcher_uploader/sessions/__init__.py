"""Sessions: which incoming folders are watched, their progress, and the file that keeps them.

A session is `active` from start to stop, then `draining` until every file in its incoming
folder is in storage (`drained`), or until APP_DRAIN_TIMEOUT_S passes (`drain_timed_out`: what
is left stays where it is and is reported). Active, draining and recently drained sessions are
written to `<processing root>/sessions.json` (temp file, fsync, rename) on every change and
resumed on start, so a restart neither forgets a session nor the answer to "is it drained?".
A session that ended with files parked drains again once they are retried (`reopen`), with a
new APP_DRAIN_TIMEOUT_S from then; so does one a file of which was written to after its upload
(its next end is reported as an update). The oldest ended sessions past DRAINED_SESSIONS_KEPT
are forgotten, never one with parked files or work in progress. `on_end` is told of every end
before it is recorded (the manifest and the event are due from then on).

    session    one session: its state, its work in progress, its progress
    registry   all sessions and the active one: start, stop, finish, reopen, save, load
    stored     sessions.json: its format, checked when read back
"""
