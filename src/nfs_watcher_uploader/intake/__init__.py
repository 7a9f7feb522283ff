"""Intake: which files in a session folder are meant, and when each is completely written.

watcher   scans, the stability rule, the drain of a stopped session
filters   APP_INCLUDE, APP_EXCLUDE, APP_FILE_EXTENSIONS
"""
