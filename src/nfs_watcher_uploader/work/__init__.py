"""Work: the queue of files, one file's transfer step by step, and files that do not go up.

pipeline      the queue, the workers, the retries, what happens to a file that fails
transfer      one file's steps: claim, stage, upload, record, complete
context       what the steps share, and the seams a test may replace
progress      files in flight: their step, bytes sent, rate; sessions' ETAs
order         the order files go up in (APP_UPLOAD_ORDER)
parked        park, list and requeue files that cannot succeed by retrying
dismissals    parked files an operator took out: removed, recorded, counted
completions   files marked completed, waiting for GC's last look
gc            the last look, then delete; prune folders
recovery      at start, queue what a previous run left
recount       at start, each session's counters read back from its ledger
staging       the local copies, and every cleanup of them
"""
