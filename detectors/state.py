"""Signed, restricted serialisation of a detector's state, for storing it (in Redis) between processes.

river's detectors keep their state in private attributes and, for ADWIN and HDDM-W, in Rust objects that only
offer an opaque ``__getstate__``; pickling them is the only way to continue *exactly* where a detector left
off. Unpickling data an attacker wrote would run their code, so two independent locks guard ``decode_state``:

1. **Envelope.** ``sign`` prefixes the pickle with a version byte, an 8-byte key tag (HMAC of a constant, so a
   rotated key is told apart from tampering) and an HMAC-SHA256 over all of it. ``verify`` checks the MAC with
   ``hmac.compare_digest`` *before* a single byte is unpickled.
2. **Allowlist.** The unpickler resolves only the exact ``(module, name)`` pairs in ``_ALLOWED_GLOBALS``;
   anything else (``os.system``, ``builtins.getattr``, ...) is refused even under a valid MAC. The pickler
   checks the same list, so a state that could not be loaded is never written.

The payload also records the river version: river's internals change between releases, so a state written by
another version is refused rather than half-applied.

>>> from river.drift import ADWIN
>>> key = b"0123456789abcdef"
>>> blob = encode_state("adwin", {"delta": 0.002}, 0, (0, 0.0), ADWIN(), key)
>>> decode_state(blob, key).name
'adwin'
"""

from __future__ import annotations

import hashlib
import hmac
import io
import pickle
import types
from collections.abc import Mapping
from typing import Any, NamedTuple

import river
from river.base import BinaryDriftDetector, DriftDetector

from detectors.exceptions import DetectorError, DetectorStateError

__all__ = [
    "FORMAT_VERSION",
    "MIN_KEY_BYTES",
    "StoredDetector",
    "decode_state",
    "encode_state",
    "sign",
    "verify",
]

FORMAT_VERSION = 1
MIN_KEY_BYTES = 16

_TAG_BYTES = 8
_MAC_BYTES = hashlib.sha256().digest_size
_HEADER_BYTES = 1 + _TAG_BYTES + _MAC_BYTES
_PICKLE_PROTOCOL = 5
_RIVER_VERSION = river.__version__
_DISCARD = "discard the stored state and let the detector start cold"

# Every global a pickled river 0.26 detector refers to, found by unpickling each detector after streams that
# exercise warm-up, warning and drift resets (tests/test_detector_state.py proves the list is sufficient).
_ALLOWED_GLOBALS = frozenset(
    {
        ("river.drift.adwin", "ADWIN"),
        ("river._river_rust.drift", "AdaptiveWindowing"),
        ("river.drift.page_hinkley", "PageHinkley"),
        ("river.drift.kswin", "KSWIN"),
        ("river.drift.binary.ddm", "DDM"),
        ("river.drift.binary.eddm", "EDDM"),
        ("river.drift.binary.hddm_a", "HDDMA"),
        ("river.drift.binary.hddm_w", "HDDMW"),
        ("river.drift.binary.hddm_w", "SampleInfo"),
        ("river.stats.mean", "Mean"),
        ("detectors.fast", "HDDMA"),
        ("detectors.fast", "Mean"),
        ("river.stats.var", "Var"),
        ("river.stats.ewmean", "EWMean"),
        ("river._river_rust.stats", "RsEWMean"),
        ("collections", "deque"),  # KSWIN's window
        ("random", "Random"),  # KSWIN's seeded sampler
        # KSWIN keeps scipy's p-value, a numpy float64; the module moved in numpy 2.
        ("numpy", "dtype"),
        ("numpy._core.multiarray", "scalar"),
        ("numpy.core.multiarray", "scalar"),
        (__name__, "_bound_method"),
    }
)

# PageHinkley stores its test as a bound method (``self._test_drift = self._test_both``); plain pickle would
# rebuild it through ``builtins.getattr``, which an allowlist must never contain. These pairs are rebuilt by
# ``_bound_method`` instead, which accepts nothing else.
_REBINDABLE_METHODS = frozenset(
    {
        ("river.drift.page_hinkley", "PageHinkley", "_test_increase"),
        ("river.drift.page_hinkley", "PageHinkley", "_test_decrease"),
        ("river.drift.page_hinkley", "PageHinkley", "_test_both"),
    }
)

_FIELDS = frozenset({"format", "river", "name", "params", "n_updates", "run", "detector"})


class StoredDetector(NamedTuple):
    """What a state blob holds: enough to rebuild the wrapper around the river detector."""

    name: str
    params: dict[str, Any]
    n_updates: int
    run: tuple[int, float]
    detector: Any


def _check_key(key: bytes) -> None:
    # A misconfigured key is not a bad state: raising DetectorError (not DetectorStateError) keeps callers
    # from "discarding state and starting cold" forever when the real fix is the configuration.
    if not isinstance(key, bytes) or len(key) < MIN_KEY_BYTES:
        raise DetectorError(
            f"the detector state key must be bytes of at least {MIN_KEY_BYTES} bytes "
            f"(got {type(key).__name__}{f' of {len(key)} bytes' if isinstance(key, bytes) else ''}); "
            "configure a random secret and pass it encoded, e.g. secret.encode()"
        )


def _key_tag(key: bytes) -> bytes:
    return hmac.new(key, b"rollguard detector state key tag", hashlib.sha256).digest()[:_TAG_BYTES]


def sign(payload: bytes, key: bytes) -> bytes:
    """Wrap ``payload`` in the envelope ``version | key tag | HMAC-SHA256(key, version | tag | payload) | payload``.

    >>> blob = sign(b"hello", b"0123456789abcdef")
    >>> blob[0], len(blob) - len(b"hello")
    (1, 41)
    """
    _check_key(key)
    header = bytes([FORMAT_VERSION]) + _key_tag(key)
    mac = hmac.new(key, header + payload, hashlib.sha256).digest()
    return header + mac + payload


def verify(data: bytes, key: bytes) -> bytes:
    """Return the payload of an envelope made by :func:`sign`, or raise ``DetectorStateError``.

    >>> verify(sign(b"hello", b"0123456789abcdef"), b"0123456789abcdef")
    b'hello'
    """
    _check_key(key)
    if not isinstance(data, (bytes, bytearray, memoryview)):
        raise DetectorStateError(f"detector state must be bytes, got {type(data).__name__}; {_DISCARD}")
    data = bytes(data)
    if len(data) < _HEADER_BYTES:
        raise DetectorStateError(
            f"detector state is truncated ({len(data)} bytes, the envelope alone needs {_HEADER_BYTES}); {_DISCARD}"
        )
    if data[0] != FORMAT_VERSION:
        raise DetectorStateError(
            f"detector state has format version {data[0]}, this build reads version {FORMAT_VERSION} "
            f"(written by another rollguard release?); {_DISCARD}"
        )
    tag, mac, payload = data[1 : 1 + _TAG_BYTES], data[1 + _TAG_BYTES : _HEADER_BYTES], data[_HEADER_BYTES:]
    if not hmac.compare_digest(tag, _key_tag(key)):
        raise DetectorStateError(
            "detector state was signed with a different key (rotated or misconfigured state key?); "
            f"configure the key it was written with, or {_DISCARD}"
        )
    expected = hmac.new(key, data[: 1 + _TAG_BYTES] + payload, hashlib.sha256).digest()
    if not hmac.compare_digest(mac, expected):
        raise DetectorStateError(
            f"detector state failed its MAC check: it was altered or truncated in storage; {_DISCARD} "
            "and find out what wrote to the state store"
        )
    return payload


def _bound_method(obj: object, name: str) -> Any:
    """Rebuild one of the few bound methods river detectors keep as attributes (see ``_REBINDABLE_METHODS``)."""
    cls = type(obj)
    if (cls.__module__, cls.__qualname__, name) not in _REBINDABLE_METHODS:
        raise pickle.UnpicklingError(f"method {cls.__qualname__}.{name} may not be restored from state")
    return getattr(obj, name)


class _StatePickler(pickle.Pickler):
    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, types.MethodType):
            owner = type(obj.__self__)
            if (owner.__module__, owner.__qualname__, obj.__func__.__name__) in _REBINDABLE_METHODS:
                return _bound_method, (obj.__self__, obj.__func__.__name__)
            raise DetectorError(f"cannot store bound method {owner.__qualname__}.{obj.__func__.__name__}")
        if isinstance(obj, (type, types.FunctionType, types.BuiltinFunctionType)):
            where = (getattr(obj, "__module__", None), getattr(obj, "__qualname__", None))
            if where not in _ALLOWED_GLOBALS:
                # Writing it would succeed, but loading it never could: fail now, while the detector still runs.
                raise DetectorError(
                    f"cannot store detector state referring to {where[0]}.{where[1]}: it is not in the state "
                    "allowlist (detectors/state.py); river changed its internals, update _ALLOWED_GLOBALS"
                )
        return NotImplemented


class _StateUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"{module}.{name} is not allowed in detector state")
        return super().find_class(module, name)


def encode_state(
    name: str,
    params: Mapping[str, Any],
    n_updates: int,
    run: tuple[int, float],
    detector: Any,
    key: bytes,
) -> bytes:
    """Pickle a river detector with the wrapper's fields and sign the result with ``key``."""
    _check_key(key)
    payload = {
        "format": FORMAT_VERSION,
        "river": _RIVER_VERSION,
        "name": name,
        "params": dict(params),
        "n_updates": n_updates,
        "run": tuple(run),
        "detector": detector,
    }
    buffer = io.BytesIO()
    _StatePickler(buffer, protocol=_PICKLE_PROTOCOL).dump(payload)
    return sign(buffer.getvalue(), key)


def decode_state(data: bytes, key: bytes) -> StoredDetector:
    """Verify, then unpickle with the allowlist, then check the shape; raise ``DetectorStateError`` on any doubt."""
    payload = verify(data, key)
    try:
        fields = _StateUnpickler(io.BytesIO(payload)).load()
    except (KeyboardInterrupt, SystemExit):
        raise
    except BaseException as exc:  # pyo3's PanicException (a bad Rust __setstate__) derives from BaseException
        raise DetectorStateError(f"detector state could not be unpickled ({exc}); {_DISCARD}") from exc
    if not isinstance(fields, dict) or set(fields) != _FIELDS:
        raise DetectorStateError(f"detector state has an unexpected layout; {_DISCARD}")
    if fields["river"] != _RIVER_VERSION:
        raise DetectorStateError(
            f"detector state was written with river {fields['river']}, this process runs river {_RIVER_VERSION} "
            f"whose detector internals may differ; {_DISCARD}"
        )
    name, params, n_updates, run, detector = (
        fields["name"],
        fields["params"],
        fields["n_updates"],
        fields["run"],
        fields["detector"],
    )
    if (
        not isinstance(name, str)
        or not isinstance(params, dict)
        or type(n_updates) is not int
        or n_updates < 0
        or not (isinstance(run, tuple) and len(run) == 2 and type(run[0]) is int and type(run[1]) is float)
        or not isinstance(detector, (DriftDetector, BinaryDriftDetector))
    ):
        raise DetectorStateError(f"detector state has fields of the wrong type; {_DISCARD}")
    return StoredDetector(name, params, n_updates, run, detector)
