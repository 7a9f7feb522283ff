"""What a consumer in the cloud gets besides the bytes, built in one place from the settings:
each blob's properties (`blobinfo`), the ledger the manifest is made from (`ledger`; None with
APP_MANIFEST=off), and the webhook events (`webhooks`; silent without APP_WEBHOOK_URL).
"""

from dataclasses import dataclass

from nfs_watcher_uploader.blob.blobinfo import BlobLabels
from nfs_watcher_uploader.cloud.ledger import Ledger
from nfs_watcher_uploader.cloud.webhooks import Webhooks
from nfs_watcher_uploader.config import Settings
from nfs_watcher_uploader.nfs.layout import Layout
from nfs_watcher_uploader.nfs.runner import Nfs


@dataclass(frozen=True, slots=True)
class Delivery:
    labels: BlobLabels
    ledger: Ledger | None
    webhooks: Webhooks

    @classmethod
    def from_settings(cls, settings: Settings, layout: Layout, nfs: Nfs) -> "Delivery":
        ledger = Ledger(layout, nfs) if settings.manifest else None
        return cls(BlobLabels(settings), ledger, Webhooks(settings, layout, nfs))
