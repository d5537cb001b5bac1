"""Export: one sub-model per device and a hashed ``manifest.json`` (a bundle).

- ``split``: one module per device for an ``ArchNet`` or any ``torch.fx``-traceable model; a cut
  across a skip connection carries every live tensor.
- ``writer``: ``bundle/`` with one TorchScript and one ONNX file per device of a sequential plan.
- ``branched``: a network with parallel branches (``BranchedNet``) and its bundle, one part per
  device of a mesh.
- ``manifest``: the schema of ``manifest.json`` (``Manifest``, validated on load) and the entries
  both writers put into it.
- ``formats``: writing one part as TorchScript and as ONNX, and the export's own ONNX check.
"""
