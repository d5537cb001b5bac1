"""Planning: which device runs which contiguous run of layers, and what that costs (paper 003 eq. (1), (2)).

- ``artifact``: ``DeploymentPlan``, the ``plan.json`` artifact.
- ``chain``: the exact split on a chain of devices by dynamic programming (``best_chain_split``)
  and eq. (1) for given boundaries with gradients (``chain_latency``).
- ``planners``: ``plan_sequential`` (chain, or the best path of a mesh), ``plan_fixed`` (given
  boundaries) and ``plan_branched`` (parallel branches on a mesh, eq. (2)).
- ``costs``: per-unit latency, output size and memory of an ``ArchSpec`` under the devices' models.
- ``baselines``: device-only, cloud-only, Neurosurgeon and HiveMind under the same models.
- ``wire``: bytes of a tensor on the wire.
"""
