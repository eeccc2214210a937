"""The fleet: workers, leases and session ownership on JetStream KV (docs/fleet.md).

Why here and not a scheduler of our own: JetStream KV already gives what ownership needs, a
compare-and-set on a key's revision (``create`` fails if the key exists, ``update(last=rev)``
fails unless the key is still at ``rev``) and watches that push every change. So:

- each stateful worker (preprocess, generator) keeps a **lease** in ``<P>_WORKERS`` under
  ``<stage>.<worker>``: capacity, load, backend, renewed four times per ``lease_s``;
- each session has an **owner record** per stage in ``<P>_OWNERS`` under ``<stage>.<session>``:
  the worker, and an **epoch** that grows with every change of owner. Records are written only
  with compare-and-set, so two placers can never both win;
- **placement** (``place``) happens at session start only (``Admission``, run by ingest), and
  again only when an owner's lease lapsed (any worker of the stage notices and re-places) or its
  owner drains (it re-places its own sessions before it exits);
- **fencing**: a worker stops publishing for its sessions once its own renewals have failed for
  three quarters of a lease, before anyone may take them over (a full lease); outputs carry the
  epoch, and receivers drop anything older than the newest epoch they have seen.

Liveness compares the lease's wall-clock renewal time with the reader's clock: across machines
the clocks must be NTP-synced (as glass-to-glass latency already requires).

By job: ``records`` (the lease and owner records, keys, epochs, ``place``; pure), ``view`` (the
watched copy of both buckets and the compare-and-set writes), ``member`` (a worker's lease,
failover sweep, fencing and drain). Admission is ingest's alone: ``services/ingest/admission.py``.
"""
