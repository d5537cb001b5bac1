"""Runtime: load a bundle without jmsnas classes, run it, verify it, time its parts, serve it across processes.

- ``bundle``: ``load_bundle`` (manifest validated, hashes checked), ``Bundle.run`` / ``run_exits``,
  ``verify_bundle``.
- ``verify``: the split network in process, accuracy, the bundle against the unsplit model and its
  exit decisions against the cascade.
- ``measure``: each exported part timed on this machine beside its predicted latency.
- ``transport``: framed ZeroMQ messages (JSON header, raw tensor bytes, no pickle), acknowledged sends
  with timeouts and reconnection.
- ``links``: token-bucket link emulation priced as the plan prices a link.
- ``serve``: one device's server (checked messages, exits, emulated analytic devices, fallback answers).
- ``local``: one process per device on this machine, wired as the plan's chain, and the feeder.
- ``report``: ``runtime.json``, measured against the plan (``plan_times``: the plan's predictions).
"""
