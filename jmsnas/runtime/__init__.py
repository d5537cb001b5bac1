"""Runtime: load a bundle without jmsnas classes, run it, verify it, time its parts.

- ``bundle``: ``load_bundle`` (manifest validated, hashes checked), ``Bundle.run`` / ``run_exits``,
  ``verify_bundle``.
- ``measure``: each exported part timed on this machine beside its predicted latency.
"""
