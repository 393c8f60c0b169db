"""Code formats, generation, normalisation, check characters and guessability.

Pure core: no I/O, no database, no clock; standard library plus pydantic (for the format model).

Forms of a code
    *display*  ``VIP-ABCD-EFGH``: what merchants print and shoppers see (prefix and suffix as
               written, pattern literals, groups joined by the separator);
    *stored*   ``VIPABCDEFGH``: upper case, separators (``- _ .`` and white space) removed,
               prefix/suffix/pattern letters and digits kept. The database key, unique per shop.
               ``display(fmt, stored)`` derives the display form; normalising the display form
               (or anything a shopper types for it) gives the stored form back.

Body
    ``length`` symbols from the alphabet (or the ``#`` slots of a ``pattern``); with
    ``check_chars=1`` the last of them is a check symbol (:mod:`plugin.formats.checkchars`: the Damm
    algorithm, or Verhoeff-Gumm for alphabet sizes 2 mod 4 other than 10), so only
    ``length - check_chars`` symbols are random.

Generation draws bulk bytes from the operating system's CSPRNG (``secrets.token_bytes``) and maps
them to symbols without bias: a byte ``b`` is kept only if ``b < floor(256 / n) * n`` and then
becomes symbol ``b % n`` (rejection sampling, done by ``bytes.translate(table, delete)``).

Guessability: an attacker who makes ``A`` uniform guesses while ``L`` of the ``S`` possible codes
are live finds one with probability ``1 - (1 - L/S)^A``. By default a format may hold at most as
many live codes as keep that below :data:`MAX_GUESS_PROBABILITY` (1 %) for
:data:`ATTACKER_ATTEMPTS` (1,000,000 guesses: about what our rate limit of ~10 attempts a minute
allows one client over three months) and never more than :data:`MAX_FILL` (1 %) of the space.
"""

from __future__ import annotations

import math
import secrets
import unicodedata
from collections.abc import Collection, Iterable, Iterator, Mapping
from dataclasses import dataclass
from enum import StrEnum
from functools import lru_cache
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from plugin.formats.checkchars import CheckScheme, scheme_for, supports

__all__ = [
    "ATTACKER_ATTEMPTS",
    "MAX_FILL",
    "MAX_GUESS_PROBABILITY",
    "MAX_STORED_LENGTH",
    "PRESETS",
    "CodeCheck",
    "CodeFormat",
    "capacity_error",
    "check",
    "code_space",
    "display",
    "entropy_bits",
    "generate",
    "guess_probability",
    "iter_generate",
    "lookup_keys",
    "max_safe_codes",
    "normalise",
    "normalise_generic",
    "suggest",
]

#: Named alphabets. ``safe`` drops the look-alikes 0/O, 1/I/L, 5/S and 2/Z (27 symbols).
PRESETS: dict[str, str] = {
    "safe": "346789ABCDEFGHJKMNPQRTUVWXY",
    "numeric": "0123456789",
    "alphanumeric": "0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ",
    "alphabetic": "ABCDEFGHIJKLMNOPQRSTUVWXYZ",
}
SEPARATORS = "-_. "  # display-only characters allowed in prefix, suffix, pattern and groups
MAX_STORED_LENGTH = 64  # the database column
ATTACKER_ATTEMPTS = 1_000_000
MAX_GUESS_PROBABILITY = 0.01
MAX_FILL = 0.01

_SYMBOLS = frozenset("0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZ")
# Classic look-alike groups. A typed character that is not in the alphabet is mapped to the one
# member of its group that is (if exactly one is); at a literal position, to that literal.
_LOOKALIKES = ("0O", "1IL", "2Z", "5S", "8B")
_ASCII_STRIP = str.maketrans("", "", SEPARATORS + "\t\n\r\v\f")
_CHUNK = 1 << 16  # codes drawn per batch


class CodeFormat(BaseModel):
    """How a campaign's codes look. Immutable; stored as JSON (:meth:`to_dict`)."""

    model_config = ConfigDict(frozen=True, extra="forbid")

    alphabet: str = Field(
        default="safe",
        validate_default=True,
        description="A preset name (safe, numeric, alphanumeric, alphabetic; lower case) or the symbols "
        "themselves (letters and digits, case-insensitive). Stored as the sorted symbols.",
    )
    length: int = Field(
        default=10, ge=4, le=64, description="Symbols in the body, check characters included. A pattern overrides it."
    )
    prefix: str = Field(default="", max_length=32, description="Fixed text before the body, e.g. 'VIP-'.")
    suffix: str = Field(default="", max_length=32, description="Fixed text after the body.")
    pattern: str | None = Field(
        default=None,
        max_length=128,
        description="Body layout: '#' is a symbol slot; letters, digits and separators are kept, e.g. 'BF-####-####'.",
    )
    group_size: int = Field(default=0, ge=0, le=64, description="Show a separator every N body symbols (0: none).")
    separator: Literal["-", "_", ".", " "] = Field(default="-", description="The group separator.")
    check_chars: int = Field(default=0, ge=0, le=1, description="1: the last body symbol is a check character.")

    @model_validator(mode="before")
    @classmethod
    def _pattern_sets_length(cls, data: Any) -> Any:
        if isinstance(data, Mapping) and isinstance(data.get("pattern"), str):
            slots = data["pattern"].count("#")
            if 4 <= slots <= 64:
                return {**data, "length": slots}
        return data

    @field_validator("alphabet")
    @classmethod
    def _alphabet(cls, value: str) -> str:
        symbols = PRESETS.get(value, value.upper())
        bad = sorted({ch for ch in symbols if ch not in _SYMBOLS})
        if bad:
            raise ValueError(f"alphabet symbols must be letters A-Z or digits 0-9; not allowed: {''.join(bad)!r}")
        dupes = sorted({ch for ch in symbols if symbols.count(ch) > 1})
        if dupes:
            raise ValueError(f"alphabet symbols must be unique (letters are case-insensitive); repeated: {''.join(dupes)}")
        if len(symbols) < 2:
            raise ValueError("an alphabet needs at least 2 symbols")
        return "".join(sorted(symbols))

    @field_validator("prefix", "suffix")
    @classmethod
    def _affix(cls, value: str) -> str:
        return _literal_text(value, "prefix and suffix")

    @field_validator("pattern")
    @classmethod
    def _pattern(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = _literal_text(value, "a pattern", extra="#")
        slots = value.count("#")
        if not 4 <= slots <= 64:
            raise ValueError(f"a pattern needs 4 to 64 '#' slots, not {slots}")
        return value

    @model_validator(mode="after")
    def _consistent(self) -> CodeFormat:
        if self.pattern is not None and self.group_size:
            raise ValueError("group_size applies to plain formats; a pattern places its own separators")
        if self.group_size == 1:
            raise ValueError("group_size must be 0 (no groups) or at least 2")
        if self.check_chars and not supports(len(self.alphabet)):
            raise ValueError(f"check characters need an alphabet of at least 3 symbols, not {len(self.alphabet)}")
        stored = _stored_length(self)
        if stored > MAX_STORED_LENGTH:
            raise ValueError(f"codes would be {stored} characters long when stored; the limit is {MAX_STORED_LENGTH}")
        return self

    @property
    def alphabet_name(self) -> str:
        """The preset this alphabet is, or ``"custom"``."""
        return next((name for name, symbols in PRESETS.items() if symbols == self.alphabet), "custom")

    @property
    def random_length(self) -> int:
        """Random symbols per code (body length minus check characters)."""
        return self.length - self.check_chars

    @property
    def check_scheme(self) -> str | None:
        """The check-character scheme's name (``damm-27``, ``verhoeff-gumm-26``...), if any."""
        return scheme_for(len(self.alphabet)).name if self.check_chars else None

    def to_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> CodeFormat:
        """Validate a format from JSON data (an empty mapping gives the default format)."""
        return cls.model_validate(dict(data))


def _literal_text(value: str, what: str, extra: str = "") -> str:
    value = value.upper()
    bad = sorted({ch for ch in value if ch not in _SYMBOLS and ch not in SEPARATORS and ch not in extra})
    if bad:
        raise ValueError(
            f"{what} may hold letters, digits and the separators {SEPARATORS!r}"
            + (f" and {extra!r}" if extra else "")
            + f"; not allowed: {''.join(bad)!r}"
        )
    return value


def _stored_length(fmt: CodeFormat) -> int:
    literals = fmt.prefix + fmt.suffix + (fmt.pattern or "").replace("#", "")
    return fmt.length + sum(ch in _SYMBOLS for ch in literals)


class CodeCheck(StrEnum):
    """What :func:`check` says of a typed code."""

    OK = "ok"  # well-formed for the format (and its check character matches)
    MALFORMED = "malformed"  # wrong length, literals or symbols: not a code of this format ("unknown")
    MISTYPED = "mistyped"  # well-formed but the check character fails: a typo


# --- compiled layout -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Layout:
    alphabet: str
    index: dict[str, int]
    random_slots: int
    scheme: CheckScheme | None
    stored_length: int
    literals: tuple[tuple[int, str], ...]  # (stored position, character)
    slots: tuple[int, ...]  # stored positions of body symbols; the check symbol last
    display_parts: tuple[int | str, ...]  # a stored position, or a display-only separator
    position_maps: tuple[dict[str, str], ...]  # per stored position: typed character -> stored
    loose_map: dict[int, str]  # for input of the wrong length
    check_ascii: bytes  # translate table: state -> the check symbol completing it

    @property
    def space(self) -> int:
        return int(len(self.alphabet) ** self.random_slots)


def _lookalike_map(alphabet: str) -> dict[str, str]:
    mapping = {}
    for group in _LOOKALIKES:
        present = [ch for ch in group if ch in alphabet]
        if len(present) == 1:
            mapping.update({ch: present[0] for ch in group if ch not in alphabet})
    return mapping


@lru_cache(maxsize=256)
def _layout(fmt: CodeFormat) -> _Layout:
    stored: list[str | None] = []  # a literal character, or None for a body slot
    parts: list[int | str] = []

    def literal(text: str) -> None:
        for ch in text:
            if ch in SEPARATORS:
                parts.append(ch)
            else:
                parts.append(len(stored))
                stored.append(ch)

    def slot() -> None:
        parts.append(len(stored))
        stored.append(None)

    literal(fmt.prefix)
    if fmt.pattern is not None:
        for ch in fmt.pattern:
            if ch == "#":
                slot()
            else:
                literal(ch)
    else:
        for i in range(fmt.length):
            if fmt.group_size and i and i % fmt.group_size == 0:
                parts.append(fmt.separator)
            slot()
    literal(fmt.suffix)

    symbols = _lookalike_map(fmt.alphabet)
    literal_chars = {ch for ch in stored if ch is not None}
    maps = [symbols if ch is None else {g: ch for group in _LOOKALIKES if ch in group for g in group if g != ch} for ch in stored]
    scheme = scheme_for(len(fmt.alphabet)) if fmt.check_chars else None
    check_ascii = bytearray(256)
    if scheme is not None:
        for state, symbol in enumerate(scheme.check_for):
            check_ascii[state] = ord(fmt.alphabet[symbol])
    return _Layout(
        alphabet=fmt.alphabet,
        index={ch: i for i, ch in enumerate(fmt.alphabet)},
        random_slots=fmt.random_length,
        scheme=scheme,
        stored_length=len(stored),
        literals=tuple((i, ch) for i, ch in enumerate(stored) if ch is not None),
        slots=tuple(i for i, ch in enumerate(stored) if ch is None),
        display_parts=tuple(parts),
        position_maps=tuple(maps),
        loose_map=str.maketrans({k: v for k, v in symbols.items() if k not in literal_chars}),
        check_ascii=bytes(check_ascii),
    )


# --- generation ------------------------------------------------------------------------------


@lru_cache(maxsize=64)
def _byte_map(alphabet: str) -> tuple[bytes, bytes, float]:
    """(translate table, bytes to delete, acceptance rate) for unbiased byte -> symbol mapping."""
    n = len(alphabet)
    keep = 256 - 256 % n  # floor(256 / n) * n
    table = bytes(ord(alphabet[b % n]) for b in range(256))
    return table, bytes(range(keep, 256)), keep / 256


def _random_symbols(alphabet: str, count: int) -> bytes:
    """``count`` independent uniform symbols (ASCII) from the CSPRNG."""
    table, delete, rate = _byte_map(alphabet)
    parts, have = [], 0
    while have < count:
        want = count - have
        part = secrets.token_bytes(int(want / rate * 1.01) + 64).translate(table, delete)
        parts.append(part)
        have += len(part)
    return b"".join(parts)[:count]


@lru_cache(maxsize=64)
def _char_rows(alphabet: str, random_slots: int) -> tuple[tuple[tuple[int, ...], ...], ...]:
    """Per payload position: ASCII code -> next state by current state (check scheme)."""
    scheme, n = scheme_for(len(alphabet)), len(alphabet)
    rows = []
    for k in range(random_slots):
        table = scheme.table(random_slots - k)  # distance from the end; the check symbol is 0
        row: list[tuple[int, ...]] = [()] * 256
        for i, ch in enumerate(alphabet):
            row[ord(ch)] = tuple(table[s][i] for s in range(n))
        rows.append(tuple(row))
    return tuple(rows)


@lru_cache(maxsize=16)
def _pair_rows(alphabet: str) -> tuple[dict[bytes, int], dict[bytes, tuple[int, ...]]]:
    """For position-independent (Damm) schemes: the state after a leading chunk of one or two
    symbols, and the transition over any two symbols (halves the lookups in bulk generation)."""
    table, n = scheme_for(len(alphabet)).tables[0], len(alphabet)
    symbols = [(ch.encode(), i) for i, ch in enumerate(alphabet)]
    first: dict[bytes, int] = {}
    pair: dict[bytes, tuple[int, ...]] = {}
    for a, ia in symbols:
        first[a] = table[0][ia]
        for b, ib in symbols:
            first[a + b] = table[table[0][ia]][ib]
            pair[a + b] = tuple(table[table[s][ia]][ib] for s in range(n))
    return first, pair


def _check_states(layout: _Layout, payloads: list[bytes]) -> list[int]:
    """The check scheme's state after each payload."""
    assert layout.scheme is not None
    r = layout.random_slots
    states: list[int] = []
    append = states.append
    if not layout.scheme.positional and len(payloads) >= 2048:
        first_map, pair = _pair_rows(layout.alphabet)
        head = slice(0, 2 - r % 2)
        rest = [slice(i, i + 2) for i in range(2 - r % 2, r, 2)]
        for code in payloads:
            s = first_map[code[head]]
            for sl in rest:
                s = pair[code[sl]][s]
            append(s)
    else:
        rows = _char_rows(layout.alphabet, r)
        for code in payloads:
            s = 0
            for row, ch in zip(rows, code, strict=True):
                s = row[ch][s]
            append(s)
    return states


def _draw(layout: _Layout, count: int) -> list[str]:
    """``count`` random stored codes (possibly repeating)."""
    r, width = layout.random_slots, layout.stored_length
    raw = _random_symbols(layout.alphabet, count * r)
    if width == r:  # no literals, no check symbol: the symbols are the codes
        text = raw.decode("ascii")
        return [text[i : i + r] for i in range(0, count * r, r)]
    buf = bytearray(width * count)
    for k in range(r):
        buf[layout.slots[k] :: width] = raw[k::r]
    for position, ch in layout.literals:
        buf[position::width] = ch.encode() * count
    if layout.scheme is not None:
        states = _check_states(layout, [raw[i : i + r] for i in range(0, count * r, r)])
        buf[layout.slots[-1] :: width] = bytes(states).translate(layout.check_ascii)
    text = buf.decode("ascii")
    return [text[i : i + width] for i in range(0, count * width, width)]


def iter_generate(
    fmt: CodeFormat, n: int, *, chunk_size: int = _CHUNK, exclude: Collection[str] | None = None
) -> Iterator[list[str]]:
    """Generate ``n`` distinct stored codes in chunks of at most ``chunk_size``.

    Codes are distinct across all chunks (the iterator remembers them: ~100 bytes a code) and
    never in ``exclude`` (e.g. codes already issued). The database's unique index stays the
    final word. ``ValueError`` at once if the format cannot hold ``n`` more distinct codes.
    """
    layout = _layout(fmt)
    taken = len(exclude) if exclude else 0
    if n < 0 or chunk_size < 1:
        raise ValueError("n must be >= 0 and chunk_size >= 1")
    if n > layout.space - taken:
        raise ValueError(
            f"cannot generate {n:,} distinct codes: this format has only {layout.space:,} possible codes"
            + (f" and {taken:,} are excluded" if taken else "")
        )
    return _generate_chunks(layout, n, chunk_size, exclude)


def _generate_chunks(layout: _Layout, n: int, chunk_size: int, exclude: Collection[str] | None) -> Iterator[list[str]]:
    seen: set[str] = set()
    made = 0
    while made < n:
        batch = _draw(layout, min(chunk_size, n - made))
        fresh = set(batch)
        if not exclude and len(fresh) == len(batch) and seen.isdisjoint(fresh):
            seen |= fresh
        else:  # a repeat (rare unless the space is small): keep first occurrences only
            kept = []
            for code in batch:
                if code not in seen and not (exclude and code in exclude):
                    seen.add(code)
                    kept.append(code)
            batch = kept
        if batch:
            made += len(batch)
            yield batch


def generate(fmt: CodeFormat, n: int, *, exclude: Collection[str] | None = None) -> list[str]:
    """``n`` distinct random codes in stored form (see :func:`iter_generate`)."""
    out: list[str] = []
    for chunk in iter_generate(fmt, n, exclude=exclude):
        out.extend(chunk)
    return out


# --- normalisation, display, checking --------------------------------------------------------


def normalise_generic(text: str) -> str:
    """Format-independent normal form: Unicode NFKC, upper case, without white space, dashes,
    underscores, dots and invisible characters. For imported codes of foreign formats; a stored
    code of ours is a fixed point. Note that ``SUMMER-10`` and ``SUMMER10`` become the same."""
    if text.isascii():
        return text.translate(_ASCII_STRIP).upper()
    text = unicodedata.normalize("NFKC", text)
    kept = (ch for ch in text if not (ch.isspace() or ch in "_.\u2212" or unicodedata.category(ch) in ("Pd", "Cf")))
    return "".join(kept).upper()


def normalise(fmt: CodeFormat, text: str) -> str:
    """The stored form of what a shopper typed for a code of ``fmt``: :func:`normalise_generic`,
    then look-alikes mapped position by position (at a symbol slot, a character missing from the
    alphabet becomes its look-alike in it, e.g. O -> 0 for numeric codes; at a literal position,
    a look-alike of the literal becomes the literal). Idempotent; never raises."""
    layout = _layout(fmt)
    cleaned = normalise_generic(text)
    if len(cleaned) != layout.stored_length:
        return cleaned.translate(layout.loose_map)
    return "".join([m.get(ch, ch) for m, ch in zip(layout.position_maps, cleaned, strict=True)])


def lookup_keys(text: str, formats: Iterable[CodeFormat]) -> list[str]:
    """The distinct stored forms ``text`` may stand for: generic, then under each format (for a
    lookup before the code's campaign is known: ``WHERE code IN (...)``)."""
    keys = dict.fromkeys([normalise_generic(text), *(normalise(fmt, text) for fmt in formats)])
    return list(keys)


def display(fmt: CodeFormat, stored: str) -> str:
    """The display form of a stored code (returned unchanged if it does not fit the format)."""
    layout = _layout(fmt)
    if len(stored) != layout.stored_length:
        return stored
    return "".join([stored[part] if isinstance(part, int) else part for part in layout.display_parts])


def check(fmt: CodeFormat, code: str) -> CodeCheck:
    """Whether ``code`` (typed or stored; normalised here) is well-formed for ``fmt``."""
    layout = _layout(fmt)
    code = normalise(fmt, code)
    if len(code) != layout.stored_length or any(code[i] != ch for i, ch in layout.literals):
        return CodeCheck.MALFORMED
    body = [layout.index.get(code[i], -1) for i in layout.slots]
    if -1 in body:
        return CodeCheck.MALFORMED
    if layout.scheme is not None and not layout.scheme.is_valid(body):
        return CodeCheck.MISTYPED
    return CodeCheck.OK


def suggest(typed: str, candidates: Iterable[str]) -> str | None:
    """The one candidate within one edit (substitution, adjacent transposition, insertion or
    deletion) of ``typed``, else ``None``. Compare normalised forms; pass only the few codes the
    caller may reveal (e.g. those bound to the same customer)."""
    near = {c for c in candidates if _within_one_edit(typed, c)}
    if typed in near:
        return typed
    return near.pop() if len(near) == 1 else None


def _within_one_edit(a: str, b: str) -> bool:
    if len(a) > len(b):
        a, b = b, a
    if len(b) - len(a) > 1:
        return False
    i = 0
    while i < len(a) and a[i] == b[i]:
        i += 1
    if len(a) < len(b):
        return a[i:] == b[i + 1 :]
    if i >= len(a) - 1:
        return True
    return a[i + 1 :] == b[i + 1 :] or (a[i] == b[i + 1] and a[i + 1] == b[i] and a[i + 2 :] == b[i + 2 :])


# --- guessability ----------------------------------------------------------------------------


def code_space(fmt: CodeFormat) -> int:
    """How many distinct codes the format can produce (check characters add none)."""
    return int(len(fmt.alphabet) ** fmt.random_length)


def entropy_bits(fmt: CodeFormat) -> float:
    """Bits of randomness per code: random symbols * log2(alphabet size)."""
    return fmt.random_length * math.log2(len(fmt.alphabet))


def _guess(space: int, live: int, attempts: int) -> float:
    if live <= 0 or attempts <= 0:
        return 0.0
    if live >= space:
        return 1.0
    return -math.expm1(attempts * math.log1p(-live / space))


def guess_probability(fmt: CodeFormat, live_codes: int, attempts: int = ATTACKER_ATTEMPTS) -> float:
    """Chance that ``attempts`` uniform random guesses hit any of ``live_codes`` live codes:
    ``1 - (1 - L/S)^A``, computed stably."""
    return _guess(code_space(fmt), live_codes, attempts)


def _max_safe(space: int, attempts: int, max_probability: float, max_fill: float) -> int:
    if attempts < 1 or not 0 < max_probability < 1 or not 0 < max_fill <= 1:
        raise ValueError("need attempts >= 1, 0 < max_probability < 1 and 0 < max_fill <= 1")
    ratio = min(-math.expm1(math.log1p(-max_probability) / attempts), max_fill)
    live = min(space, math.floor(space * ratio))
    while live > 0 and (_guess(space, live, attempts) > max_probability or live > space * max_fill):
        live = min(live - 1, math.floor(live * (1 - 1e-12)))  # float rounding at the boundary
    return live


def max_safe_codes(
    fmt: CodeFormat,
    attempts: int = ATTACKER_ATTEMPTS,
    max_probability: float = MAX_GUESS_PROBABILITY,
    max_fill: float = MAX_FILL,
) -> int:
    """The most live codes the format may hold: ``attempts`` guesses find one with probability at
    most ``max_probability``, and at most ``max_fill`` of the space is in use."""
    return _max_safe(code_space(fmt), attempts, max_probability, max_fill)


def capacity_error(
    fmt: CodeFormat,
    existing: int,
    n: int,
    *,
    attempts: int = ATTACKER_ATTEMPTS,
    max_probability: float = MAX_GUESS_PROBABILITY,
    max_fill: float = MAX_FILL,
) -> str | None:
    """``None`` if the format can hold ``n`` more codes next to ``existing`` live ones; else a
    message for the merchant, with the numbers and the shortest body that would do."""
    total = existing + n
    limit = max_safe_codes(fmt, attempts, max_probability, max_fill)
    if total <= limit:
        return None
    space, size, r = code_space(fmt), len(fmt.alphabet), fmt.random_length
    chance = guess_probability(fmt, total, attempts)
    msg = (
        f"Too many codes for this format: {existing:,} existing + {n:,} new = {total:,} live codes, but "
        f"{r} random symbols from an alphabet of {size} make only {space:,} possible codes "
        f"({entropy_bits(fmt):.1f} bits), which can safely hold at most {limit:,}. "
    )
    if total >= space:
        msg += "That is not even enough distinct codes. "
    else:
        if chance > max_probability:
            msg += (
                f"An attacker making {attempts:,} guesses would find a live code with probability "
                f"{_percent(chance)} (the limit is {_percent(max_probability)}). "
            )
        if total > space * max_fill:
            msg += f"{_percent(total / space)} of all possible codes would be live (the limit is {_percent(max_fill)}). "
    need = next((k for k in range(r + 1, 65) if _max_safe(size**k, attempts, max_probability, max_fill) >= total), None)
    if need is None:
        return msg + "Use a larger alphabet."
    if fmt.pattern is not None:
        return msg + f"Use at least {need} random symbols: add {need - r} '#' slots to the pattern."
    return msg + f"Use at least {need} random symbols (a length of {need + fmt.check_chars})."


def _percent(p: float) -> str:
    return f"{p * 100:.3g}%"
