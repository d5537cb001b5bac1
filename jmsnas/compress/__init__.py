"""Compressors at a cut: an encoder on the sending device, a decoder on the receiving one.

- ``quantize``: the ``Compressor`` settings, ``none`` and ``quantize`` (8/4/2 bits) codecs, calibration.
- ``autoencoder``: the ``autoencoder`` compressor (paper 004's two training steps).
- ``distilled``: the ``distilled_bottleneck`` compressor, a student head with a bottleneck (paper 002).
"""
