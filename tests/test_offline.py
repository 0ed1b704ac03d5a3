"""Training and inference open no network connection (the hospital network must not see model traffic)."""

from __future__ import annotations

import socket

import numpy as np
import pytest

from ai.infer import Analyzer


@pytest.fixture
def no_network(monkeypatch: pytest.MonkeyPatch):
    attempts: list[object] = []

    def refuse(self, address, *a, **k):  # noqa: ANN001
        if getattr(self, "family", None) in (socket.AF_INET, socket.AF_INET6):
            attempts.append(address)
            raise OSError("network disabled in this test")
        return real_connect(self, address, *a, **k)

    real_connect = socket.socket.connect
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", lambda *a, **k: refuse(socket.socket(), a[0]))
    return attempts


def test_inference_is_offline(no_network):
    analyzer = Analyzer.load("default", "cpu")
    levels = analyzer.analyze(np.random.default_rng(0).normal(500, 100, (384, 320)).astype(np.float32), (0.9, 0.9))
    assert len(levels) == 11 and no_network == []


@pytest.mark.data
def test_training_is_offline(no_network, shared_data, tmp_path):
    from ai.training import train

    items = train.prepare(train.load_dataset(shared_data)[:6])
    train.train_landmarks(items, epochs=1, seed=0, log=lambda m: None)
    train.train_grader(items, epochs=1, seed=0, log=lambda m: None)
    assert no_network == []


@pytest.mark.data
def test_seed_yolo_training_and_inference_are_offline(no_network, shared_data, tmp_path, monkeypatch):
    """ultralytics checks fonts, versions and telemetry over the network unless told not to."""
    pytest.importorskip("ultralytics", reason="the optional seed extra is not installed")
    from ai import seed
    from ai.training import train

    monkeypatch.setenv("YOLO_CONFIG_DIR", str(tmp_path / "yolo"))
    items = train.prepare(train.load_dataset(shared_data)[:4])
    det = seed.train_detector(items, epochs=1, seed=0, log=lambda m: None)
    xy, conf = det.locate(items[0].img01)
    assert xy.shape == (11, 2) and np.isfinite(xy).all() and conf.shape == (11,)
    assert no_network == []
