"""`python -m nfs_watcher_uploader`: the console script (the service, or `verify`)."""

from nfs_watcher_uploader.main import run

run()
