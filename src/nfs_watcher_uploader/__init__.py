"""nfs-watcher-uploader: move finished recordings from an NFS share to Azure Blob Storage.

Layers, top to bottom. A module imports only from its own package and from the layers below
its own, never from a layer above (tests/test_layers.py checks it, and that nothing imports in
a cycle):

    main, __main__             the console script and the app factory
    cli/                       terminal commands that read the API: status
    api/                       routes, views, schemas, the API token, what one client may cost
    service                    the composition root: builds, starts and stops every part
    replicas/                  N replicas on one share: membership, progress, adoption, the
                               leader, and the hooks a replica puts into the parts below
    intake/                    watcher (when a file is completely written), filters
    work/                      pipeline, transfer, context, progress, order, parked,
                               dismissals, completions, gc, recovery, recount, staging
    cloud/                     ledger, manifest, reports, webhooks, jobs, delivery, retention,
                               verify
    blob/                      storage, credentials, azure_errors, blocks, early, rest, signing,
                               block_ids, blobinfo
    uplink/                    bandwidth, wire, history
    sessions/                  session, registry, stored: sessions, their progress, their file
    nfs/                       runner, opening, reading, scan, moves, copying, state, trees,
                               probe, layout, handover
    telemetry                  traces, metrics, logs
    settings_checks            settings that can never work; loading them, or exit naming each
    coord/                     coordination of N replicas through the control container:
                               member leases, roster, rendezvous, the shared session state
    config, errors, items      settings; what a caller does about a failure; the domain's items
    constants, rates, backoff  names and limits; rates and schedules; trying again
    redaction                  what no error text may show (a URL's query, a key)
"""
