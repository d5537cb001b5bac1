"""Faults: a killed device loses no sample and rejoins; a malformed message gets an error reply, the next is served."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
import zmq
from test_serve import FAST, assert_gone, build_exit_bundle
from test_transport import _port

from jmsnas.runtime.bundle import load_bundle
from jmsnas.runtime.local import Kill, LocalRun, serve_local
from jmsnas.runtime.serve import DeviceServer, manifest_hash
from jmsnas.runtime.transport import Sender, pack, unpack


@pytest.fixture(scope="module")
def exit_bundle(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.Tensor]:
    return build_exit_bundle(tmp_path_factory.mktemp("faults") / "bundle", threshold_quantile=0.6)


def test_a_killed_device_loses_no_sample_and_rejoins(exit_bundle, tmp_path: Path) -> None:
    bundle, x = exit_bundle
    b = load_bundle(bundle, "onnx")
    expected, exit_index = b.run_exits(x)
    going_on = [int(i) for i in torch.nonzero(exit_index == 1).flatten()]
    k = going_on[1]  # d2 dies just before this sample is fed: d1 cannot reach it
    run = LocalRun(kill=(Kill("d2", k, restart_after_s=1.0),), **FAST)
    report = serve_local(bundle, [xi.numpy() for xi in x], run, out=tmp_path / "runtime.json")
    assert_gone(report["_pids"])
    assert report["lost"] == 0 and report["answered"] == report["samples"] == len(x)
    assert report["restarts"] == {"d0": 0, "d1": 0, "d2": 1}
    rows = {r["sample"]: r for r in report["per_sample"]}
    # a second answer (dropped) comes only from a sample re-fed after its deadline, or from one that was
    # sent on to d2 (the device that dies): d1 answered it alone after late acknowledgements while its copy
    # did arrive, or the killed d2 answered it and the restarted d2 (which has forgotten what its
    # predecessor ran) ran d1's resend again. A sample that left at d0 or d1 is never answered twice.
    assert sum(r["duplicates"] for r in rows.values()) == report["duplicates"]
    assert sum(r["refeeds"] for r in rows.values()) == report["refed"]
    odd = [r for r in rows.values() if r["duplicates"] and not (r["refeeds"] or r["fell_back"] or r["device"] == "d2")]
    assert not odd, f"duplicates nothing explains (k={k}; device logs in {tmp_path}): {odd}"
    assert rows[k]["fell_back"] and rows[k]["device"] == "d0" and rows[k]["exit"] == 0  # client-only: d0's exit
    exit0 = b.runners[0]((x[k : k + 1],))[0]
    np.testing.assert_allclose(report["_logits"][k][0], exit0[0].numpy(), atol=1e-5)
    assert report["fell_back"] >= 1 and sum(report["answered_at"].values()) == len(x)
    last = going_on[-1]
    assert last > k and rows[last]["device"] == "d2" and not rows[last]["fell_back"]  # d2 rejoined
    np.testing.assert_allclose(report["_logits"][last][0], expected[last].numpy(), atol=1e-5)


def test_a_malformed_message_gets_an_error_reply_and_the_next_is_served(exit_bundle) -> None:
    bundle, x = exit_bundle
    b = load_bundle(bundle, "onnx")
    wire = b.runners[1](b.runners[0]((x[:1],))[1:])  # what d1 sends d2 for sample 0
    part = b.spec.parts[2]
    port, answers_port = _port(), _port()
    server = DeviceServer(bundle, "d2", f"127.0.0.1:{port}", None)
    thread = threading.Thread(target=server.serve, daemon=True)
    thread.start()
    ctx = zmq.Context()
    pull = ctx.socket(zmq.PULL)
    pull.bind(f"tcp://127.0.0.1:{answers_port}")
    sender = Sender(ctx, f"127.0.0.1:{port}", timeout_ms=3000, attempts=1)
    try:
        token = manifest_hash(bundle)
        codec = {"compressor": part.decoder.compressor, "params": part.decoder.params}
        good = {"kind": "sample", "run": "t", "manifest": token, "reply_to": f"127.0.0.1:{answers_port}",
                "codec": codec}
        names = [t.name for t in part.inputs]
        tensors = [(n, w.numpy()) for n, w in zip(names, wire, strict=True)]
        bad = [
            ([b"{not json"], "header"),
            (pack({**good, "sample": 1, "manifest": "0" * 64}, tensors), "manifest sha256"),
            (pack({**good, "sample": 2}, [(n, np.zeros((1, 3), a.dtype)) for n, a in tensors]), "this part takes"),
            (pack({**good, "sample": 3}, [(n, a.astype(np.float64)) for n, a in tensors]), "this part takes"),
            (pack({**good, "sample": 4, "codec": None}, tensors), "codec"),
        ]
        for sample, (frames, reason) in enumerate(bad):
            sender.sock.send_multipart(frames)
            assert pull.poll(0) == 0
            reply = unpack(sender.sock.recv_multipart()) if sender.sock.poll(5000) else None
            assert reply is not None and reply.header.kind == "error" and reason in reply.header.error, sample
        ok, why = sender.send(pack({**good, "sample": 5}, tensors), 5)
        assert ok, why
        assert pull.poll(10_000)
        answer = unpack(pull.recv_multipart())
        assert answer.header.sample == 5 and answer.header.answer["device"] == "d2"
        expected = b.runners[2](wire)[0]
        np.testing.assert_allclose(answer.named()["logits"], expected.numpy(), atol=1e-6)
    finally:
        server.stop.set()
        thread.join(10)
        sender.close()
        pull.close(linger=0)
        ctx.destroy(linger=0)
    assert not thread.is_alive()
