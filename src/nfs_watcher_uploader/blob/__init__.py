"""Azure Blob Storage: credentials, what Azure's errors mean, and verified uploads.

storage       one container: upload a file under its name or the next free one
credentials   the credential chain, and the first credential that reaches the container
azure_errors  the one place that maps the SDK's errors to what the caller does (start-up
              included: the answers no retry can change)
blocks        files sent in blocks: the memory budget, resume from uncommitted blocks
early         blocks of a large file sent while it is read
rest          the lean request path: Put Blob, Put Block, Put Block List
signing       Shared Key signatures for it, as the SDK computes them
block_ids     keyed block ids, and their key on NFS
blobinfo      what a blob carries besides its bytes (metadata, type, tier, tags)
"""
