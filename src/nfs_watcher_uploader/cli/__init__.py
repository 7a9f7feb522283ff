"""Commands for a terminal that read the service's API (not the service itself).

status    what the service is doing: sessions, files in flight, bandwidth; exit 0, 1 or 2
"""
