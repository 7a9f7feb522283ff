"""Intake: which files in a session folder are meant, and when each is completely written."""
