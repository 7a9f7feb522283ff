"""nfs-watcher-uploader: move finished recordings from an NFS share to Azure Blob Storage."""

__version__ = "0.1.0"
