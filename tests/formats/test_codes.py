"""Code formats: validation, generation, normalisation, display, checking, guessability."""

from __future__ import annotations

import itertools
import json
import math
import secrets
from collections import Counter

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from plugin.formats import codes
from plugin.formats.codes import (
    PRESETS,
    CodeCheck,
    CodeFormat,
    capacity_error,
    check,
    code_space,
    display,
    entropy_bits,
    generate,
    guess_probability,
    iter_generate,
    lookup_keys,
    max_safe_codes,
    normalise,
    normalise_generic,
    suggest,
)

SYMBOLS = "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ"
NUMERIC = CodeFormat(alphabet="numeric", length=8)


@st.composite
def formats(draw: st.DrawFn, check_chars: int | None = None) -> CodeFormat:
    if check_chars is None:
        check_chars = draw(st.integers(0, 1))
    custom = st.sets(st.sampled_from(SYMBOLS), min_size=2 + check_chars).map("".join)
    alphabet = draw(st.sampled_from(list(PRESETS)) | custom)
    affix = st.text(alphabet="abcVIP019-_. ", max_size=4)
    common = {"alphabet": alphabet, "prefix": draw(affix), "suffix": draw(affix), "check_chars": check_chars}
    if draw(st.booleans()):
        tokens = draw(st.lists(st.sampled_from(["#", "##", "-", "a", "7", ".", " "]), max_size=10))
        return CodeFormat(pattern="".join(tokens) + "####", **common)
    return CodeFormat(
        length=draw(st.integers(4, 20)),
        group_size=draw(st.sampled_from([0, 2, 3, 4, 5])),
        separator=draw(st.sampled_from(["-", "_", ".", " "])),
        **common,
    )


# --- formats ---------------------------------------------------------------------------------


def test_default_format() -> None:
    fmt = CodeFormat()
    assert fmt.alphabet == "346789ABCDEFGHJKMNPQRTUVWXY" and len(fmt.alphabet) == 27
    assert (fmt.length, fmt.prefix, fmt.suffix, fmt.pattern, fmt.check_chars) == (10, "", "", None, 0)
    assert fmt.alphabet_name == "safe" and fmt.check_scheme is None
    assert not set(fmt.alphabet) & set("0O1IL5S2Z")


def test_presets_and_custom_alphabets_are_canonical() -> None:
    assert CodeFormat(alphabet="numeric").alphabet == "0123456789"
    assert CodeFormat(alphabet="alphanumeric").alphabet == SYMBOLS
    assert CodeFormat(alphabet="alphabetic").alphabet_name == "alphabetic"
    custom = CodeFormat(alphabet="zyx321")
    assert custom.alphabet == "123XYZ" and custom.alphabet_name == "custom"
    assert custom == CodeFormat(alphabet="XYZ123")
    assert CodeFormat(alphabet="SAFE").alphabet == "AEFS"  # upper case is symbols, not the preset


def test_pattern_overrides_length() -> None:
    fmt = CodeFormat(pattern="bf-####-####", length=20)
    assert fmt.pattern == "BF-####-####" and fmt.length == 8


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"alphabet": "AB+C"}, "letters A-Z or digits"),
        ({"alphabet": "ABCA"}, "unique"),
        ({"alphabet": "aA"}, "unique"),
        ({"alphabet": "A"}, "at least 2 symbols"),
        ({"length": 3}, "greater than or equal to 4"),
        ({"length": 65}, "less than or equal to 64"),
        ({"pattern": "###-"}, "4 to 64 '#' slots"),
        ({"pattern": "####*"}, "not allowed"),
        ({"prefix": "VIP#"}, "not allowed"),
        ({"suffix": "€"}, "not allowed"),
        ({"pattern": "####", "group_size": 2}, "pattern places its own separators"),
        ({"group_size": 1}, "at least 2"),
        ({"separator": "/"}, "separator"),
        ({"alphabet": "AB", "check_chars": 1}, "at least 3 symbols"),
        ({"check_chars": 2}, "less than or equal to 1"),
        ({"length": 60, "prefix": "ABCDE"}, "limit is 64"),
        ({"colour": "red"}, "Extra inputs"),
    ],
)
def test_invalid_formats_raise_clear_value_errors(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        CodeFormat.from_dict(fields)


@given(formats())
def test_to_dict_round_trips_through_json(fmt: CodeFormat) -> None:
    data = json.loads(json.dumps(fmt.to_dict()))
    assert CodeFormat.from_dict(data) == fmt


def test_empty_dict_is_the_default_and_schema_is_served() -> None:
    assert CodeFormat.from_dict({}) == CodeFormat()
    schema = CodeFormat.model_json_schema()
    assert set(schema["properties"]) >= {"alphabet", "length", "prefix", "suffix", "pattern", "check_chars"}


# --- generation ------------------------------------------------------------------------------


@settings(max_examples=60, deadline=None)
@given(formats())
def test_generate_normalise_display_check_round_trip(fmt: CodeFormat) -> None:
    made = generate(fmt, 5)
    assert len(set(made)) == 5
    for code in made:
        shown = display(fmt, code)
        assert check(fmt, code) is CodeCheck.OK
        assert normalise(fmt, code) == code
        assert normalise(fmt, shown) == code
        assert normalise(fmt, " " + "-".join(shown.lower()) + " .") == code
        assert normalise_generic(shown) == code
        assert display(fmt, normalise(fmt, shown)) == shown
        assert code in lookup_keys(shown.lower(), [CodeFormat(), fmt])


@settings(max_examples=40, deadline=None)
@given(formats(check_chars=1))
def test_every_substitution_and_adjacent_transposition_is_mistyped(fmt: CodeFormat) -> None:
    [code] = generate(fmt, 1)
    slots = codes._layout(fmt).slots
    for i in slots:
        for symbol in fmt.alphabet:
            if symbol != code[i]:
                assert check(fmt, code[:i] + symbol + code[i + 1 :]) is CodeCheck.MISTYPED
    for i, j in itertools.pairwise(slots):  # neighbours in the body, the check symbol too
        if j == i + 1 and code[i] != code[j]:
            assert check(fmt, code[:i] + code[j] + code[i] + code[j + 1 :]) is CodeCheck.MISTYPED


@pytest.mark.parametrize(
    "fmt",
    [
        CodeFormat(),
        CodeFormat(check_chars=1),  # Damm, pairs of symbols per lookup
        CodeFormat(alphabet="numeric", check_chars=1, prefix="N-"),  # Damm's order-10 table
        CodeFormat(alphabet="alphabetic", check_chars=1),  # Verhoeff-Gumm, positional
        CodeFormat(alphabet="alphanumeric", pattern="A#-##B#-###", check_chars=1, suffix="-Z"),
    ],
)
def test_bulk_generation_is_well_formed(fmt: CodeFormat) -> None:
    made = generate(fmt, 5000)
    assert len(set(made)) == 5000
    assert all(check(fmt, code) is CodeCheck.OK for code in made)


def test_generation_shapes() -> None:
    vip = CodeFormat(prefix="VIP-", length=8, group_size=4)
    [code] = generate(vip, 1)
    assert code.startswith("VIP") and len(code) == 11
    assert display(vip, code) == f"VIP-{code[3:7]}-{code[7:]}"
    bf = CodeFormat(pattern="BF-####-####", alphabet="numeric")
    [code] = generate(bf, 1)
    assert code[:2] == "BF" and code[2:].isdigit() and len(code) == 10


def test_generation_draws_from_the_csprng_without_bias(monkeypatch: pytest.MonkeyPatch) -> None:
    """Bytes >= floor(256/27)*27 = 243 are dropped, the rest become alphabet[b % 27]."""
    fmt = CodeFormat()
    stream = bytes(i % 256 for i in range(4096))
    monkeypatch.setattr(secrets, "token_bytes", lambda k: stream[:k])
    symbols = "".join(fmt.alphabet[b % 27] for b in stream if b < 243)
    assert sorted(generate(fmt, 20)) == sorted(symbols[i : i + 10] for i in range(0, 200, 10))


def test_small_spaces_and_exclusions() -> None:
    tiny = CodeFormat(alphabet="AB", length=4)  # 16 codes
    assert sorted(generate(tiny, 16)) == sorted(f"{i:04b}".translate(str.maketrans("01", "AB")) for i in range(16))
    taken = set(generate(tiny, 10))
    assert set(generate(tiny, 6, exclude=taken)).isdisjoint(taken)
    with pytest.raises(ValueError, match="only 16 possible codes and 10 are excluded"):
        generate(tiny, 7, exclude=taken)
    with pytest.raises(ValueError, match="only 16 possible codes"):
        generate(tiny, 17)
    assert generate(tiny, 0) == []


def test_iter_generate_chunks_are_distinct() -> None:
    chunks = list(iter_generate(CodeFormat(alphabet="numeric", length=4), 500, chunk_size=64))
    assert all(1 <= len(chunk) <= 64 for chunk in chunks)
    assert len({code for chunk in chunks for code in chunk}) == 500


def _chi_square_p(counts: list[int]) -> float:
    """Upper-tail p-value of Pearson's chi-square for uniform counts (Wilson-Hilferty)."""
    total, k = sum(counts), len(counts) - 1
    expected = total / len(counts)
    x = sum((c - expected) ** 2 for c in counts) / expected
    z = ((x / k) ** (1 / 3) - (1 - 2 / (9 * k))) / math.sqrt(2 / (9 * k))
    return 0.5 * math.erfc(z / math.sqrt(2))


@pytest.mark.parametrize("preset", list(PRESETS))
def test_symbols_are_uniform(preset: str) -> None:
    fmt = CodeFormat(alphabet=preset, length=10)
    made = generate(fmt, 20_000)  # 200,000 symbols
    overall = Counter("".join(made))
    first = Counter(code[0] for code in made)
    assert _chi_square_p([overall[s] for s in fmt.alphabet]) > 1e-6
    assert _chi_square_p([first[s] for s in fmt.alphabet]) > 1e-6


def test_the_uniformity_test_catches_modulo_bias() -> None:
    """Mapping every byte with b % 27 (no rejection) favours 13 of 27 symbols by 11 %."""
    biased = Counter(b % 27 for b in secrets.token_bytes(200_000))
    assert _chi_square_p([biased[s] for s in range(27)]) < 1e-6


# --- normalisation, display, checking --------------------------------------------------------


@pytest.mark.parametrize(
    "typed",
    [
        "ABCDEFGHJK",
        " abcde-fghjk ",
        "ab_cd.ef gh\u2013jk",
        "ABCDE\u2212FGHJK",
        "A-B-C-D-E--F-G-H-J-K",
        "\uff21\uff22\uff23\uff24\uff25\uff26\uff27\uff28\uff2a\uff2b",
        "ABCDE\u200bFGHJK",
    ],
)
def test_typing_noise_is_removed(typed: str) -> None:
    assert normalise(CodeFormat(), typed) == "ABCDEFGHJK"
    assert check(CodeFormat(), typed) is CodeCheck.OK


def test_lookalikes_map_to_the_alphabet() -> None:
    assert normalise(NUMERIC, "oilz-sb00") == "01125800"
    alphabetic = CodeFormat(alphabet="alphabetic", length=4)
    assert normalise(alphabetic, "0528") == "OSZB"
    assert normalise(alphabetic, "1ABC") == "1ABC"  # 1 could be I or L: left alone
    assert check(alphabetic, "1ABC") is CodeCheck.MALFORMED
    assert normalise(CodeFormat(), "O1I5S2ZL00") == "O1I5S2ZL00"  # safe has no look-alikes at all
    assert check(CodeFormat(), "O1I5S2ZL00") is CodeCheck.MALFORMED
    assert normalise(CodeFormat(alphabet="alphanumeric", length=4), "O0I1") == "O0I1"


def test_lookalikes_at_literal_positions_become_the_literal() -> None:
    fmt = CodeFormat(alphabet="numeric", prefix="BOX-", length=6)
    assert normalise(fmt, "b0x 12345o") == "BOX123450"
    assert check(fmt, "8OX-123450") is CodeCheck.OK
    assert normalise(fmt, "b0x 1234o") == "B0X1234O"  # wrong length: literal characters are left alone


@given(formats(), st.text(alphabet="abcio0125sz8-_. VIPX\u2013", max_size=30))
def test_normalise_is_idempotent(fmt: CodeFormat, typed: str) -> None:
    once = normalise(fmt, typed)
    assert normalise(fmt, once) == once


def test_display_forms() -> None:
    assert display(CodeFormat(group_size=5), "ABCDEFGHJK") == "ABCDE-FGHJK"
    vip = CodeFormat(prefix="VIP-", length=8, group_size=4)
    assert display(vip, "VIPABCDEFGH") == "VIP-ABCD-EFGH"
    assert normalise(vip, "vip-abcd-efgh") == "VIPABCDEFGH"
    assert display(CodeFormat(pattern="BF-####-####", alphabet="numeric"), "BF12345678") == "BF-1234-5678"
    assert display(CodeFormat(suffix=" X", length=4, separator=" ", group_size=2), "ABCDX") == "AB CD X"
    assert display(vip, "FOREIGN-CODE") == "FOREIGN-CODE"


def test_check_results() -> None:
    damm = CodeFormat(alphabet="numeric", length=4, check_chars=1)
    assert damm.check_scheme == "damm-10"
    assert check(damm, "5724") is CodeCheck.OK
    assert check(damm, "5742") is CodeCheck.MISTYPED
    assert check(damm, "5725") is CodeCheck.MISTYPED
    assert check(damm, "572") is CodeCheck.MALFORMED
    assert check(damm, "57A4") is CodeCheck.MALFORMED
    vip = CodeFormat(prefix="VIP", length=6)
    assert check(vip, "VIPABCDEF") is CodeCheck.OK
    assert check(vip, "VIXABCDEF") is CodeCheck.MALFORMED
    assert CodeFormat(alphabet="alphabetic", check_chars=1).check_scheme == "verhoeff-gumm-26"


def test_generic_normalisation_and_lookup_keys() -> None:
    assert normalise_generic(" summer-10_off. ") == "SUMMER10OFF"
    assert lookup_keys("1234-567o", [NUMERIC, CodeFormat(), NUMERIC]) == ["1234567O", "12345670"]


# --- guessability ----------------------------------------------------------------------------


def test_entropy_and_space() -> None:
    assert entropy_bits(CodeFormat()) == 10 * math.log2(27)
    assert round(entropy_bits(CodeFormat()), 2) == 47.55
    assert entropy_bits(CodeFormat(alphabet="numeric", length=4)) == 4 * math.log2(10)
    assert entropy_bits(CodeFormat(check_chars=1)) == 9 * math.log2(27)  # check symbols add none
    assert entropy_bits(CodeFormat(pattern="BF-####-####", prefix="X")) == 8 * math.log2(27)
    assert entropy_bits(CodeFormat(alphabet="alphanumeric", length=16, check_chars=1)) == 15 * math.log2(36)
    assert code_space(CodeFormat()) == 27**10 == 205_891_132_094_649
    assert code_space(CodeFormat(alphabet="numeric", length=4)) == 10_000


def test_guess_probability() -> None:
    four = CodeFormat(alphabet="numeric", length=4)
    assert guess_probability(four, 1, 1) == pytest.approx(1e-4, rel=1e-12)
    assert guess_probability(four, 0, 1000) == 0.0
    assert guess_probability(four, 10_000, 1) == 1.0
    six = CodeFormat(alphabet="numeric", length=6)
    assert guess_probability(six, 1000, 100) == pytest.approx(1 - (1 - 1e-3) ** 100, rel=1e-12)
    # stable where the naive formula loses every digit
    assert guess_probability(CodeFormat(), 1, 1) == pytest.approx(1 / 27**10, rel=1e-12)
    assert guess_probability(CodeFormat(), 2_000_000, 1_000_000) == pytest.approx(
        -math.expm1(1e6 * math.log1p(-2e6 / 27**10)), rel=1e-12
    )


@pytest.mark.parametrize("fmt", [CodeFormat(), CodeFormat(alphabet="numeric", length=12), CodeFormat(length=16)])
def test_max_safe_codes_is_the_boundary(fmt: CodeFormat) -> None:
    limit = max_safe_codes(fmt)
    assert guess_probability(fmt, limit) <= 0.01 < guess_probability(fmt, limit + 1)


def test_max_safe_codes_defaults_and_fill_limit() -> None:
    assert 2_000_000 < max_safe_codes(CodeFormat()) < 2_100_000
    four = CodeFormat(alphabet="numeric", length=4)
    assert max_safe_codes(four) == 0
    assert max_safe_codes(four, attempts=1) == 100  # 1 % of the space
    with pytest.raises(ValueError, match="max_probability"):
        max_safe_codes(four, max_probability=0)


def test_capacity_refusals_give_numbers() -> None:
    message = capacity_error(CodeFormat(alphabet="numeric", length=4), 0, 20_000)
    assert message is not None
    for figure in ("20,000 live codes", "10,000 possible codes", "13.3 bits", "at least 13 random symbols"):
        assert figure in message
    assert capacity_error(CodeFormat(), 0, 1_000_000) is None
    message = capacity_error(CodeFormat(), 1_500_000, 1_000_000)
    assert message is not None and "1,000,000 guesses" in message and "length of 11" in message
    message = capacity_error(CodeFormat(pattern="BF-####-####"), 0, 1_000_000)
    assert message is not None and "'#' slots" in message
    assert capacity_error(CodeFormat(alphabet="numeric", length=4), 0, 50, attempts=1) is None


# --- typo suggestions ------------------------------------------------------------------------


def test_suggest() -> None:
    bound = ["ABCDEFGHJK", "MNPQRTUVWX"]
    assert suggest("ABCDEFGHJX", bound) == "ABCDEFGHJK"  # substitution
    assert suggest("BACDEFGHJK", bound) == "ABCDEFGHJK"  # transposition
    assert suggest("ABCDEFGHJKK", bound) == "ABCDEFGHJK"  # insertion
    assert suggest("ABCDEFGHK", bound) == "ABCDEFGHJK"  # deletion
    assert suggest("ABCDEFGHJK", bound) == "ABCDEFGHJK"
    assert suggest("ABCDEFGXYZ", bound) is None
    assert suggest("ABCD", ["ABCE", "ABCF"]) is None  # ambiguous
    assert suggest("ABCD", []) is None


def _osa_distance(a: str, b: str) -> int:
    d = [[i + j if i * j == 0 else 0 for j in range(len(b) + 1)] for i in range(len(a) + 1)]
    for i in range(1, len(a) + 1):
        for j in range(1, len(b) + 1):
            d[i][j] = min(d[i - 1][j] + 1, d[i][j - 1] + 1, d[i - 1][j - 1] + (a[i - 1] != b[j - 1]))
            if i > 1 and j > 1 and a[i - 1] == b[j - 2] and a[i - 2] == b[j - 1]:
                d[i][j] = min(d[i][j], d[i - 2][j - 2] + 1)
    return d[len(a)][len(b)]


@given(st.text("ABC", max_size=6), st.text("ABC", max_size=6))
def test_one_edit_matches_the_reference_distance(a: str, b: str) -> None:
    assert codes._within_one_edit(a, b) == (_osa_distance(a, b) <= 1)
