"""Check-character schemes: exhaustive proofs of the detection guarantees, and test vectors."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from plugin.formats.checkchars import DAMM_10, CheckScheme, scheme_for, supports

SIZES = range(3, 37)  # every alphabet size a format allows (2..36 symbols; 2 has no scheme)
PRESET_SIZES = (27, 10, 36, 26)  # safe, numeric, alphanumeric, alphabetic


def _no_symmetric_pair(matrix: list[tuple[int, ...]]) -> bool:
    """True when matrix[x][y] != matrix[y][x] for every x != y."""
    columns = list(zip(*matrix, strict=True))
    return all(sum(a == b for a, b in zip(row, col, strict=True)) == 1 for row, col in zip(matrix, columns, strict=True))


def test_damm_published_vector() -> None:
    damm = scheme_for(10)
    assert damm.name == "damm-10"
    assert damm.tables == (DAMM_10,)
    assert damm.check_symbol([5, 7, 2]) == 4  # the classic example: 572 -> 5724
    assert damm.is_valid([5, 7, 2, 4])
    assert not damm.is_valid([5, 2, 7, 4])
    assert all(DAMM_10[i][i] == 0 for i in range(10))  # Damm's zero diagonal: check = interim


@pytest.mark.parametrize("n", SIZES)
def test_tables_are_latin_squares(n: int) -> None:
    """Each step permutes the symbols (fixed state) and the states (fixed symbol), so a single
    substituted symbol always ends in another final state: every substitution is caught."""
    scheme = scheme_for(n)
    everything = list(range(n))
    for table in scheme.tables:
        assert all(sorted(row) == everything for row in table)
        assert all(sorted(col) == everything for col in zip(*table, strict=True))
    assert all(scheme.tables[0][s][scheme.check_for[s]] == 0 for s in range(n))


@pytest.mark.parametrize("n", SIZES)
def test_every_adjacent_transposition_is_caught(n: int) -> None:
    """For every state s, every position p (the symbol p places from the end, so p = 1 is the
    last payload symbol next to the check symbol at p = 0) and every x != y:
    T[p-1][T[p][s][x]][y] != T[p-1][T[p][s][y]][x]. Later steps are permutations, so swapping any
    two different neighbours, the check symbol included, changes the final state."""
    scheme = scheme_for(n)
    for p in range(1, len(scheme.tables) + 1):
        first, second = scheme.table(p), scheme.table(p - 1)
        for s in range(n):
            assert _no_symmetric_pair([second[t] for t in first[s]]), (n, p, s)


@pytest.mark.parametrize("n", [n for n in SIZES if n % 4 != 2 or n == 10])
def test_damm_quasigroups_are_totally_anti_symmetric(n: int) -> None:
    scheme = scheme_for(n)
    assert scheme.name == f"damm-{n}" and not scheme.positional
    table = scheme.tables[0]
    for c in range(n):
        assert _no_symmetric_pair([table[t] for t in table[c]])


@pytest.mark.parametrize("n", [6, 14, 18, 22, 26, 30, 34])
def test_verhoeff_gumm_for_sizes_2_mod_4(n: int) -> None:
    scheme = scheme_for(n)
    assert scheme.name == f"verhoeff-gumm-{n}" and scheme.positional and len(scheme.tables) == n


@pytest.mark.parametrize("n", PRESET_SIZES)
def test_swapping_last_symbol_and_check_symbol_is_caught(n: int) -> None:
    """Exhaustively, from every state: payload ... a + check c  versus  ... c + a."""
    scheme = scheme_for(n)
    last, check = scheme.table(1), scheme.table(0)
    for s in range(n):
        for a in range(n):
            c = scheme.check_for[last[s][a]]
            assert check[last[s][a]][c] == 0
            if a != c:
                assert check[last[s][c]][a] != 0


def test_two_symbols_have_no_scheme() -> None:
    assert not supports(2) and supports(3)
    with pytest.raises(ValueError, match="at least 3 symbols"):
        scheme_for(2)


@given(st.sampled_from(SIZES).flatmap(lambda n: st.tuples(st.just(n), st.lists(st.integers(0, n - 1), max_size=12))))
def test_every_single_error_is_caught_end_to_end(case: tuple[int, list[int]]) -> None:
    n, payload = case
    scheme: CheckScheme = scheme_for(n)
    word = [*payload, scheme.check_symbol(payload)]
    assert scheme.is_valid(word)
    for i, symbol in enumerate(word):
        for other in range(n):
            if other != symbol:
                assert not scheme.is_valid([*word[:i], other, *word[i + 1 :]])
    for i in range(len(word) - 1):
        if word[i] != word[i + 1]:
            assert not scheme.is_valid([*word[:i], word[i + 1], word[i], *word[i + 2 :]])
    assert not scheme.is_valid([])
