"""Azure Blob Storage: credentials, error classification, and verified uploads."""
