from nfs_watcher_uploader.main import run

run()
