"""NFS: every blocking call on the share, in threads with deadlines; where each file lives.

Three rules hold for every step here, whatever an attacker or an unlucky recorder puts in the
share:
- Nothing is followed: a session folder, a subfolder or a file that is a symbolic link is never
  entered, read or moved; files are opened with O_NOFOLLOW | O_NONBLOCK (a FIFO cannot block the
  open) and checked to be regular on the open descriptor (`opening`). What is not a regular file
  raises `NotOurs` and is left where it is.
- Nothing is replaced: `moves.move` never renames over an existing file (it answers TAKEN).
- An ambiguous answer from NFS is judged by looking, by inode, never guessed.

    runner    `Nfs`: each call in a thread with a deadline, copies and short calls apart
    opening   folders by descriptor, regular files only
    scan      one pass over a session folder
    moves     never-replacing renames: move, claim, return
    copying   NFS -> staging, hashing the bytes read
    state     the service's own state files
    trees     walking and pruning <date>/<session>/ trees
    probe     at start: the incoming folder is there, a claim's rename works, one mode
    layout    every path, computed in one place
    handover  a dead replica's tree renamed into its adopter's, file by file
"""
