"""NFS: every blocking call on the share, in threads with deadlines; where each file lives."""
