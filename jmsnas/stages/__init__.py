"""The stages of a run after the search, one module each, built from library packages.

- ``deploy``: plan → exits → fit compressors → reprice → export → verify → record, for one chosen
  network (``deploy_choice``) or every feasible choice of a search (``deploy_run``).
"""
