"""N replicas on one share (APP_COORDINATION=azure): the service's side of coordination, built
on coord/ (the storage side). Modules, each importing only from those above it:

    control     the control container's client from the data credential; what start-up refuses
    membership  join, renew while NFS answers, the roster; the shared session state; lost
    progress    this member's counters in its blob, and their sums over the members
    adoption    a dead member's files taken over into this member's tree; trees nobody owns
    leader      drains judged over every member, reports due, the state mended
    runtime     what the service builds and runs besides a single replica, and its hooks
"""
