"""Detector state: exact continuation after a round trip, and refusal of anything that cannot be trusted."""

from __future__ import annotations

import json
import os
import pickle

import numpy as np
import pytest
from river.drift import ADWIN, PageHinkley

from detectors import BINARY_DETECTORS, DETECTORS, DetectorError, DetectorStateError, DriftDetector, make_detector
from detectors import state

KEY = b"k" * 32
OTHER_KEY = b"o" * 32

# Params that make every detector drift (and reset) and, where it has one, enter its warning zone, so the
# state round trip covers all of river's internal objects, including those that exist only after a drift.
PARAMS = {
    "adwin": {},
    "page_hinkley": {"delta": 0.5, "threshold": 25},
    "kswin": {"alpha": 0.001},
    "ddm": {},
    "eddm": {},
    "hddm_a": {"two_sided_test": True},
    "hddm_w": {"two_sided_test": True},
}


def three_level_stream(name: str, n: int = 1000) -> list:
    """Levels change at 300 and 700: 0/1 rates 0.1 -> 0.5 -> 0.9, or means 0 -> 2 -> 4 with unit noise."""
    rng = np.random.default_rng(5)
    level = np.searchsorted([300, 700], np.arange(n), side="right")
    if name in BINARY_DETECTORS:
        return (rng.random(n) < np.array([0.1, 0.5, 0.9])[level]).astype(int).tolist()
    return (rng.normal(0.0, 1.0, n) + 2.0 * level).tolist()


def run(detector, values, start: int) -> list[int]:
    return [start + i for i, x in enumerate(values) if detector.update(x)]


def first_drift(name: str) -> int:
    detector = make_detector(name, PARAMS[name], seed=1)
    return run(detector, three_level_stream(name), 0)[0]


@pytest.mark.parametrize("name", DETECTORS)
@pytest.mark.parametrize("snapshot", ["at-500", "right-after-a-drift"])
def test_restored_detector_continues_exactly_like_the_original(name, snapshot):
    values = three_level_stream(name)
    cut = 500 if snapshot == "at-500" else first_drift(name) + 1
    original = make_detector(name, PARAMS[name], seed=1)
    run(original, values[:cut], 0)
    restored = DriftDetector.from_state(original.to_state(KEY), KEY)
    assert restored.describe() == original.describe()

    after_original = run(original, values[cut:], cut)
    after_restored = run(restored, values[cut:], cut)
    assert after_restored == after_original
    assert after_original, "the rest of the stream holds a level change, so the comparison must include a drift"
    assert restored.describe() == original.describe()
    assert restored.n_updates == len(values)


@pytest.mark.parametrize("name", DETECTORS)
def test_restored_detector_keeps_name_params_and_flags(name):
    detector = make_detector(name, PARAMS[name], seed=1)
    run(detector, three_level_stream(name)[: first_drift(name) + 1], 0)
    restored = DriftDetector.from_state(detector.to_state(KEY), KEY)
    assert (restored.name, restored.params, restored.binary) == (name, PARAMS[name], name in BINARY_DETECTORS)
    assert restored.drift_detected is True  # the snapshot was taken on the drifting update


@pytest.mark.parametrize("name", DETECTORS)
def test_describe_is_plain_json(name):
    detector = make_detector(name, PARAMS[name], seed=1)
    run(detector, three_level_stream(name)[:400], 0)
    described = json.loads(json.dumps(detector.describe()))
    assert described["name"] == name
    assert described["n_updates"] == 400
    assert set(described) >= {"name", "params", "n_updates", "drift_detected"}


@pytest.mark.parametrize("name", ["adwin", "page_hinkley"])
def test_estimation_is_the_level_seen_so_far(name):
    detector = make_detector(name, {}, seed=0)
    assert detector.estimation is None
    for x in (1.0, 2.0, 3.0):
        detector.update(x)
    assert detector.estimation == pytest.approx(2.0)
    assert detector.describe()["estimation"] == detector.estimation


@pytest.mark.parametrize("name", sorted(set(DETECTORS) - {"adwin"}))
def test_estimation_restarts_with_the_detector_after_a_drift(name):
    values = three_level_stream(name)
    detector = make_detector(name, PARAMS[name], seed=1)
    drift_at = first_drift(name)
    run(detector, values[: drift_at + 1], 0)
    assert detector.estimation == pytest.approx(float(np.mean(values[: drift_at + 1])))
    run(detector, values[drift_at + 1 : drift_at + 11], drift_at + 1)
    assert detector.estimation == pytest.approx(float(np.mean(values[drift_at + 1 : drift_at + 11])))


def blob() -> bytes:
    detector = make_detector("page_hinkley", {}, seed=0)
    detector.update(1.0)
    return detector.to_state(KEY)


def flip(data: bytes, index: int) -> bytes:
    return data[:index] + bytes([data[index] ^ 0x01]) + data[index + 1 :]


@pytest.mark.parametrize(
    ("tamper", "message"),
    [
        pytest.param(lambda b: flip(b, 0), "format version 0, this build reads version 1", id="version-byte"),
        pytest.param(lambda b: bytes([2]) + b[1:], "format version 2", id="future-version"),
        pytest.param(lambda b: flip(b, 3), "signed with a different key", id="key-tag"),
        pytest.param(lambda b: flip(b, 20), "failed its MAC check", id="mac"),
        pytest.param(lambda b: flip(b, len(b) - 5), "failed its MAC check", id="payload"),
        pytest.param(lambda b: b[:-1], "failed its MAC check", id="truncated-payload"),
        pytest.param(lambda b: b + b"\x00", "failed its MAC check", id="appended-byte"),
        pytest.param(lambda b: b[:12], r"truncated \(12 bytes", id="truncated-header"),
        pytest.param(lambda b: b"", r"truncated \(0 bytes", id="empty"),
        pytest.param(lambda b: b.hex(), "must be bytes, got str", id="text"),
    ],
)
def test_tampered_state_is_rejected_with_what_to_do(tamper, message):
    with pytest.raises(DetectorStateError, match=message) as caught:
        DriftDetector.from_state(tamper(blob()), KEY)
    assert "discard the stored state and let the detector start cold" in str(caught.value)


def test_state_signed_with_another_key_is_rejected():
    with pytest.raises(DetectorStateError, match="signed with a different key"):
        DriftDetector.from_state(blob(), OTHER_KEY)


@pytest.mark.parametrize("key", [b"short", "k" * 32, None])
def test_a_bad_key_is_a_configuration_error_not_a_state_error(key):
    detector = make_detector("adwin", {}, seed=0)
    for call in (lambda: detector.to_state(key), lambda: DriftDetector.from_state(blob(), key)):
        with pytest.raises(DetectorError, match="state key must be bytes of at least 16 bytes") as caught:
            call()
        assert not isinstance(caught.value, DetectorStateError)


class Exploit:
    """Unpickling this would call os.getcwd (harmless here, os.system in a real attack)."""

    def __reduce__(self):
        return os.getcwd, ()


class GetattrExploit:
    def __reduce__(self):
        return getattr, ("text", "upper")


class RebindOtherMethod:
    def __reduce__(self):
        return state._bound_method, (ADWIN(), "_reset")


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(Exploit(), "os.getcwd|posix.getcwd", id="os-function"),
        pytest.param(GetattrExploit(), "builtins.getattr is not allowed", id="getattr"),
        pytest.param(RebindOtherMethod(), "method ADWIN._reset may not be restored", id="other-bound-method"),
    ],
)
def test_correctly_signed_code_is_still_refused_by_the_allowlist(payload, message):
    # Defence in depth: even a leaked key does not let stored state run code.
    signed = state.sign(pickle.dumps(payload, protocol=5), KEY)
    with pytest.raises(DetectorStateError, match=message):
        DriftDetector.from_state(signed, KEY)


@pytest.mark.parametrize(
    ("payload", "message"),
    [
        pytest.param(b"not a pickle", "could not be unpickled", id="garbage"),
        pytest.param(pickle.dumps({"name": "adwin"}), "unexpected layout", id="other-layout"),
        pytest.param(pickle.dumps([1, 2]), "unexpected layout", id="not-a-mapping"),
    ],
)
def test_signed_payloads_that_are_not_detector_state_are_rejected(payload, message):
    with pytest.raises(DetectorStateError, match=message):
        DriftDetector.from_state(state.sign(payload, KEY), KEY)


def test_fields_of_the_wrong_type_are_rejected():
    fields = {
        "format": 1,
        "river": state._RIVER_VERSION,
        "name": "adwin",
        "params": {},
        "n_updates": -3,
        "run": (0, 0.0),
        "detector": ADWIN(),
    }
    signed = state.sign(pickle.dumps(fields, protocol=5), KEY)
    with pytest.raises(DetectorStateError, match="fields of the wrong type"):
        DriftDetector.from_state(signed, KEY)


def test_state_from_another_river_version_is_rejected(monkeypatch):
    monkeypatch.setattr(state, "_RIVER_VERSION", "0.1.0")
    old = make_detector("adwin", {}, seed=0).to_state(KEY)
    monkeypatch.undo()
    with pytest.raises(DetectorStateError, match=r"written with river 0\.1\.0, this process runs river"):
        DriftDetector.from_state(old, KEY)


def test_state_that_could_not_be_loaded_is_never_written():
    detector = DriftDetector("page_hinkley", {"threshold": Exploit()}, PageHinkley())
    with pytest.raises(DetectorError, match="not in the state allowlist"):
        detector.to_state(KEY)


def test_page_hinkley_bound_test_survives_without_getattr():
    detector = make_detector("page_hinkley", {"mode": "up"}, seed=0)
    restored = DriftDetector.from_state(detector.to_state(KEY), KEY)
    # The restored test is bound to the restored detector, not to a copy, so it sees its threshold.
    test = restored._detector._test_drift
    assert test.__self__ is restored._detector and test.__func__ is PageHinkley._test_increase


def test_envelope_layout_is_version_tag_mac_payload():
    signed = state.sign(b"payload", KEY)
    assert signed[0] == state.FORMAT_VERSION
    assert len(signed) == 1 + 8 + 32 + len(b"payload")
    assert signed.endswith(b"payload")
    assert state.verify(signed, KEY) == b"payload"
