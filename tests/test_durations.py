import pytest
from hypothesis import given
from hypothesis import strategies as st

from rules.durations import MAX_DURATION_MS, DurationError, format_duration, parse_duration
from rules.exceptions import RollguardError

PARSES = {
    "seconds": ("30s", 30_000),
    "minutes": ("5m", 300_000),
    "hours": ("2h", 7_200_000),
    "days": ("1d", 86_400_000),
    "zero_with_unit": ("0s", 0),
    "bare_zero": ("0", 0),
    "milliseconds": ("500ms", 500),
    "compound": ("1h30m", 5_400_000),
    "every_unit": ("1d2h3m4s5ms", 93_784_005),
    "overflowing_unit_is_fine": ("90s", 90_000),
    "leading_zero": ("05m", 300_000),
    "ten_years": ("3650d", MAX_DURATION_MS),
}


@pytest.mark.parametrize(("text", "ms"), PARSES.values(), ids=PARSES.keys())
def test_parse_duration_accepts(text, ms):
    assert parse_duration(text) == ms


REJECTS = {
    "empty": ("", "empty"),
    "negative": ("-5m", "cannot be negative"),
    "fraction": ("1.5h", "fractions are not allowed; write e.g. '1h30m'"),
    "no_unit": ("300", "missing unit; write e.g. '300s'"),
    "unknown_unit": ("5w", "'w' is not a unit (did you mean '35d'?)"),
    "unit_word": ("5min", "'5min': 'min' is not a unit (did you mean '5m'?); expected a number followed by ms, s, m, "
                          "h or d, e.g. 30s, 5m or 1h30m"),
    "unit_words": ("2hours30minutes", "'hours' is not a unit (did you mean '2h30m'?)"),
    "millis_word": ("500msec", "'msec' is not a unit (did you mean '500ms'?)"),
    "letters_only": ("soon", "'soon' is not a number followed by a unit; expected a number followed by"),
    "number_without_unit_at_end": ("1h30", "'30' has no unit"),
    "upper_case": ("5M", "units are lower-case"),
    "space_inside": ("1h 30m", "spaces are not allowed (did you mean '1h30m'?)"),
    "space_before_unit": ("5 min", "spaces are not allowed (did you mean '5m'?)"),
    "surrounding_space": (" 5m", "spaces are not allowed (did you mean '5m'?)"),
    "wrong_order": ("30m1h", "largest first"),
    "repeated_unit": ("1m1m", "once each"),
    "unit_only": ("m", "'m' is not a number followed by a unit"),
    "too_long": ("3651d", "longer than the maximum of 3650d"),
    "absurdly_long": ("9" * 5000 + "s", "longer than the maximum"),
    "not_a_string": (300, "expected a string"),
}


@pytest.mark.parametrize(("text", "message"), REJECTS.values(), ids=REJECTS.keys())
def test_parse_duration_rejects_with_a_message_that_says_what_to_write(text, message):
    with pytest.raises(DurationError, match="invalid duration") as caught:
        parse_duration(text)
    assert message in str(caught.value)
    assert isinstance(caught.value, RollguardError)


FORMATS = {
    "zero": (0, "0s"),
    "millis": (500, "500ms"),
    "seconds_and_millis": (1_500, "1s500ms"),
    "minute_and_half": (90_000, "1m30s"),
    "hour": (3_600_000, "1h"),
    "day_and_minute": (86_460_000, "1d1m"),
}


@pytest.mark.parametrize(("ms", "text"), FORMATS.values(), ids=FORMATS.keys())
def test_format_duration_is_the_shortest_canonical_form(ms, text):
    assert format_duration(ms) == text


@pytest.mark.parametrize("bad", [-1, 1.5, "5m", True, None])
def test_format_duration_rejects_what_is_not_whole_milliseconds(bad):
    with pytest.raises(DurationError):
        format_duration(bad)


@given(st.integers(min_value=0, max_value=MAX_DURATION_MS))
def test_format_then_parse_round_trips(ms):
    assert parse_duration(format_duration(ms)) == ms


@given(st.text(max_size=12))
def test_parse_duration_raises_only_duration_error(text):
    try:
        ms = parse_duration(text)
    except DurationError:
        return
    assert 0 <= ms <= MAX_DURATION_MS
    assert parse_duration(format_duration(ms)) == ms
