"""The binary state format of window buckets (rules.aggregate.Bucket.to_bytes, format version 1) and its sketches.

What must hold: decoding an encoding gives back an equal object, whose own encoding is byte-identical (the bytes
depend on the value alone); the pinned example bytes do not change without a new version; JSON buckets written by
earlier versions are read as they were; anything else — truncated, bit-flipped, unknown version, bad JSON — is
refused with ``StateFormatError``, never read as some other bucket; and an engine restarted from the binary state
continues with byte-identical outputs.
"""

from __future__ import annotations

import zlib

import numpy as np
import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rules.aggregate import BUCKET_FORMAT, COUNTER_NAMES, Bucket, StateFormatError
from rules.engine import Engine
from rules.exceptions import RollguardError
from rules.loader import CATALOG, load_rules
from rules.sketches import SPARSE_LIMIT, DDSketch, HyperLogLog, SketchError
from rules.sketches.packing import Reader, pack_uints, put_int, put_uint
from rules.state import FeatureState
from streams.offline.scenario import generate, scenario_from_args

U64 = st.integers(0, 2**64 - 1)


# --- varints ----------------------------------------------------------------------------------------------------


@given(st.lists(st.integers(-(2**80), 2**80)), st.lists(U64))
def test_varints_round_trip_and_the_array_form_equals_the_scalar_form(signed, unsigned):
    out = bytearray()
    for n in signed:
        put_int(out, n)
    scalar = bytearray()
    for n in unsigned:
        put_uint(scalar, n)
    assert pack_uints(np.array(unsigned, dtype=np.uint64)) == bytes(scalar)
    out += scalar
    r = Reader(bytes(out), "test")
    assert [r.int() for _ in signed] == signed
    assert r.uints(len(unsigned)).tolist() == unsigned
    assert r.at_end()


@pytest.mark.parametrize("data, problem", [
    (b"\x80\x00", "non-canonical"),
    (b"\x80", "varints expected"),
    (b"\xff" * 10 + b"\x01", "larger than 64 bits"),
    (b"\xff" * 9 + b"\x02", "larger than 64 bits"),
])  # fmt: skip
def test_the_array_reader_refuses_malformed_varints(data, problem):
    with pytest.raises(SketchError, match=problem):
        Reader(data, "test").uints(1)


# --- sketches ---------------------------------------------------------------------------------------------------


def ddsketch_bytes(s: DDSketch) -> bytes:
    out = bytearray()
    s.write_to(out)
    return bytes(out)


def hll_bytes(h: HyperLogLog) -> bytes:
    out = bytearray()
    h.write_to(out)
    return bytes(out)


latencies = st.one_of(st.just(0.0), st.floats(1e-6, 1e9), st.floats(0.5, 60_000))


@given(st.lists(latencies, max_size=300), st.sampled_from([0.005, 0.01, 0.2]))
def test_ddsketch_binary_state_round_trips(values, accuracy):
    s = DDSketch(accuracy)
    for v in values:
        s.add(v)
    data = ddsketch_bytes(s)
    r = Reader(data, "latency")
    back = DDSketch.read_from(r)
    assert r.at_end() and back == s and back.to_state() == s.to_state() and back.count == s.count
    assert ddsketch_bytes(back) == data
    assert [back.quantile(q) for q in (0, 0.5, 0.95, 1)] == [s.quantile(q) for q in (0, 0.5, 0.95, 1)]


@settings(max_examples=60)
@given(st.lists(U64, max_size=2600), st.sampled_from([4, 10, 14, 18]))
def test_hll_binary_state_round_trips_in_every_mode(hashes, precision):
    h = HyperLogLog(precision)
    for x in hashes:
        h.add_hash(x)
    data = hll_bytes(h)
    r = Reader(data, "users")
    back = HyperLogLog.read_from(r)
    assert r.at_end() and back == h and back.to_state() == h.to_state()
    assert back.cardinality() == h.cardinality()
    assert hll_bytes(back) == data


@pytest.mark.parametrize("precision, n, mode", [(14, 10, 0), (14, SPARSE_LIMIT, 0), (14, SPARSE_LIMIT + 1, 1),
                                                (14, 3000, 1), (14, 200_000, 2), (4, 2000, 2)])  # fmt: skip
def test_hll_writes_the_mode_its_registers_call_for(precision, n, mode):
    rng = np.random.default_rng(n)
    h = HyperLogLog(precision)
    for x in rng.integers(0, 2**63, n, dtype=np.uint64).tolist():
        h.add_hash(x * 2 + 1)
    data = hll_bytes(h)
    assert data[:2] == bytes((precision, mode))
    assert HyperLogLog.read_from(Reader(data, "users")) == h
    if mode == 1:  # about one byte per non-zero register
        assert len(data) < 1.3 * np.count_nonzero(np.frombuffer(h._registers, np.uint8)) + 10


def test_hll_with_large_gaps_and_ranks_round_trips():
    h = HyperLogLog(14)
    h._densify()
    h._registers[0], h._registers[5000], h._registers[16383] = 51, 1, 9  # escaped gaps and ranks, last register
    data = hll_bytes(h)
    assert data[1] == 1 and HyperLogLog.read_from(Reader(data, "users")) == h


# --- buckets ----------------------------------------------------------------------------------------------------

counter_names = st.one_of(
    st.sampled_from(COUNTER_NAMES),
    st.builds(lambda p, s: p + s, st.sampled_from(["o:", "flag:", "sug:", "th:", "rev:", "tk:"]), st.text(max_size=12)),
    st.text(max_size=12),
)


@st.composite
def buckets(draw, bits: int = 70, signed: bool = True) -> Bucket:
    c = draw(st.dictionaries(counter_names, st.integers(-(2**bits) if signed else 0, 2**bits), max_size=25))
    lat = users = None
    if draw(st.booleans()):
        lat = DDSketch(0.005)
        for v in draw(st.lists(latencies, max_size=100)):
            lat.add(v)
    if draw(st.booleans()):
        users = HyperLogLog()
        n = draw(st.sampled_from([0, 5, SPARSE_LIMIT, 2000]))
        for x in np.random.default_rng(draw(st.integers(0, 2**32))).integers(0, 2**63, n).tolist():
            users.add_hash(x)
    return Bucket(c, lat, users)


@settings(max_examples=80)
@given(buckets())
def test_bucket_binary_state_round_trips(b):
    data = b.to_bytes()
    assert data[0] == BUCKET_FORMAT
    back = Bucket.decode(data)
    assert back == b and back.to_state() == b.to_state() and list(back.c) == sorted(b.c)
    assert back.to_bytes() == data


@settings(max_examples=40)
@given(buckets(bits=62))  # orjson, the previous writer, refuses ints beyond 64 bits: none were ever stored
def test_a_json_bucket_of_the_previous_format_reads_as_it_was_written(b):
    legacy = orjson.dumps(b.to_state())  # what streams.live.processor stored before the binary format
    assert Bucket.decode(legacy) == b
    assert Bucket.decode(legacy).to_bytes() == b.to_bytes()


# A bucket exactly as the JSON-writing rollguard stored it (3 counters, a latency sketch, 2 users), and the same bucket
# in format version 1: the bytes are pinned, so changing the layout without a new version byte fails here.
LEGACY = (b'{"c":{"lat.n":2,"lat.s":960000,"n":3,"o:timeout":1},"lat":{"a":0.005,"z":0,"b":[[1044,1],[1391,1]]},'
          b'"users":{"p":14,"s":[1234567890123456789,9876543210987654321]}}')  # fmt: skip
V1 = bytes.fromhex(
    "01" "03" "04"  # version 1; a latency and a users sketch; 4 counters:
    "0204" "04809875" "0006" "010774696d656f757402"  # lat.n 2, lat.s 960000, n 3, "o:" "timeout" 1 (zigzag values)
    "7b14ae47e17a743f" "00" "02" "a810db02" "0101"  # DDSketch: 0.005, zero 0, 2 bins at 1044 and +347, counts 1 1
    "0e" "00" "02" "1581e97df4102211" "b10cb7e3b8871089"  # HLL: p 14, exact, 2 hashes (uint64 little-endian)
    "2ead7096"  # crc32
)


def test_the_pinned_legacy_and_binary_buckets_decode_to_the_same_bucket():
    old = Bucket.decode(LEGACY)
    assert old.c == {"lat.n": 2, "lat.s": 960_000, "n": 3, "o:timeout": 1}
    assert old.lat.count == 2 and old.users.cardinality() == 2
    assert old.to_bytes() == V1
    assert Bucket.decode(V1) == old


def corrupt_cases() -> list:
    good = V1
    body = good[:-4]
    flipped = bytearray(good)
    flipped[7] ^= 0x04  # a counter's value
    resealed_bad_flags = bytearray(body)
    resealed_bad_flags[1] = 0x80
    resealed_bad_flags += zlib.crc32(resealed_bad_flags).to_bytes(4, "little")
    return [
        pytest.param(b"", "empty", id="empty"),
        pytest.param(b"\x02" + good[1:], "format version 2", id="newer-version"),
        pytest.param(b"\x00" + good[1:], "format version 0", id="version-0"),
        pytest.param(b"[1, 2]", "format version 91", id="json-array"),
        pytest.param(b'{"c": {"n": 1', "not a valid one", id="truncated-json"),
        pytest.param(b'{"x": 1}', "not a valid one", id="json-without-counters"),
        pytest.param(b'{"c": {}, "lat": {"a": 2, "z": 0, "b": []}}', "not a valid one", id="json-bad-sketch"),
        pytest.param(bytes(flipped), "checksum", id="bit-flip"),
        pytest.param(good[:-1], "checksum", id="truncated"),
        pytest.param(good + b"\x00", "checksum", id="trailing-byte"),
        pytest.param(bytes(resealed_bad_flags), "unknown flags", id="bad-flags-valid-checksum"),
    ]


@pytest.mark.parametrize("value, message", corrupt_cases())
def test_a_corrupt_or_unknown_bucket_is_refused_with_a_clear_message(value, message):
    with pytest.raises(StateFormatError, match=message) as e:
        Bucket.decode(value)
    assert isinstance(e.value, RollguardError)


def test_every_truncation_of_a_binary_bucket_is_refused_even_with_a_matching_checksum():
    """The layout itself is self-delimiting: no proper prefix of a body is a valid body (the checksum is a second
    line of defence, not the only one)."""
    body = V1[:-4]
    for cut in range(1, len(body)):
        part = body[:cut]
        with pytest.raises(StateFormatError):
            Bucket.decode(part + zlib.crc32(part).to_bytes(4, "little"))


# --- a restart from the binary state continues exactly -----------------------------------------------------------

RULES = load_rules([CATALOG])
KEY = b"state-key-0123456789"


def events() -> list:
    from rules.events import EventParser, Pseudonymizer

    parser = EventParser(Pseudonymizer(b"u" * 20))
    evs = generate(scenario_from_args("latency_spike", duration_ms="6h", seed=3))
    return [parser.parse_obj(e) for e in evs]


@pytest.mark.parametrize("legacy", [False, True], ids=["binary", "json-of-the-previous-version"])
def test_an_engine_restarted_from_stored_buckets_gives_byte_identical_outputs(legacy):
    evs = events()
    whole = Engine(RULES)
    full = [whole.step(evs), whole.finish()]
    cut = len(evs) // 2
    first = Engine(RULES)
    a = first.step(evs[:cut])
    second = Engine(RULES)
    key = b"state-key-0123456789"
    for f, fs in first.features.items():
        core = orjson.loads(orjson.dumps(fs.core_state(key, first.config.allowed_lateness_ms)))
        stored, _ = fs.bucket_fields(first.plan, None)
        if legacy:
            stored = {k: orjson.dumps(Bucket.decode(v).to_state()) for k, v in stored.items()}
        second.features[f] = FeatureState.from_parts(core, stored, second.plan, key)
        assert second.features[f].to_state(key)["stores"] == fs.to_state(key)["stores"]
    second.breaker = first.breaker
    b, c = second.step(evs[cut:]), second.finish()
    got = [a.decisions + b.decisions + c.decisions, a.commands + b.commands + c.commands, a.pages + b.pages + c.pages]
    want = [full[0].decisions + full[1].decisions, full[0].commands + full[1].commands, full[0].pages + full[1].pages]
    assert orjson.dumps(got) == orjson.dumps(want)
    assert sum(len(x) for x in want) > 0


def test_a_corrupt_stored_bucket_stops_the_load_instead_of_starting_from_less():
    evs = events()[:3000]
    eng = Engine(RULES)
    eng.step(evs)
    f, fs = next(iter(eng.features.items()))
    stored, _ = fs.bucket_fields(eng.plan, None)
    field = next(iter(stored))
    stored[field] = b"\x07" + stored[field][1:]
    with pytest.raises(StateFormatError, match="format version 7"):
        FeatureState.from_parts(fs.core_state(KEY, 0), stored, eng.plan, KEY)


@settings(max_examples=40)
@given(st.lists(buckets(bits=40, signed=False), min_size=1, max_size=6))
def test_every_metric_over_a_window_of_decoded_buckets_equals_the_original(parts):
    """What rules read: every metric of the contract, over the merge of the buckets, before and after a round trip
    through the binary format."""
    from rules.metrics import _METRICS, metric_value

    def window(bs: list[Bucket]) -> Bucket:
        out = Bucket.empty(True, True)
        for b in bs:
            out.merge(b)
        return out

    decoded = [Bucket.decode(b.to_bytes()) for b in parts]
    for base in sorted(_METRICS):
        params = ("review_score:4", "confidence:0.5") if base.startswith("share_") else ("error", "pii_leak", "x")
        for param in params:
            assert repr(metric_value(base, param, window(decoded))) == repr(metric_value(base, param, window(parts)))
