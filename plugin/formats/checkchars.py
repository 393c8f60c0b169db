"""Check characters: one extra symbol that catches every single-symbol substitution and every
adjacent transposition of a code, over an alphabet of any size n >= 3.

Pure: no I/O, standard library only. Symbols are alphabet indices ``0 .. n-1``.

Both schemes are published and run left to right as a small state machine. The state starts at 0
and each symbol moves it through a transition table; a sequence (payload followed by its check
symbol) is valid when the final state is 0. The check symbol is simply the one symbol that brings
the state after the payload back to 0. Because it is an ordinary member of the sequence, the
proofs below cover it too: swapping the last payload symbol with the check symbol is caught like
any other adjacent transposition (``tests/formats/test_checkchars.py`` verifies this exhaustively).

**Damm** (H. M. Damm, *Total anti-symmetrische Quasigruppen*, dissertation, Marburg 2004;
*Totally anti-symmetric quasigroups for all orders n != 2, 6*, Discrete Math. 307 (2007)).
``state' = state o symbol`` over a quasigroup ``o`` (a Latin square: each row and column is a
permutation) that is totally anti-symmetric: ``(c o x) o y = (c o y) o x  =>  x = y``.

* Latin square => a substituted symbol changes the state at its position, and every later step
  is a permutation of states, so the final state is no longer 0;
* anti-symmetry => two swapped neighbours ``x, y`` leave different states ``(c o x) o y`` and
  ``(c o y) o x``, and again later steps are permutations.

Quasigroups used, by n (direct products of such quasigroups keep both properties):

* n = 10: Damm's published order-10 table (zero diagonal), so numeric codes get the classic
  Damm check digit (``572`` -> ``5724``);
* n odd: ``x o y = (2x - y) mod n`` (``(c o x) o y = 4c - 2x - y``, so equality forces x = y);
* n = 2^k * m with k >= 2, m odd: GF(2^k) with ``x o y = a*x + y`` (a = the field element
  ``x``, so ``a != 0, 1``: equality gives ``(a + 1)(x - y) = 0``), times the odd construction
  on Z_m.

**Verhoeff-Gumm** for the remaining n = 2m, m odd, n != 10 (n = 14, 18, 22, 26, 30, 34, ...)
where a totally anti-symmetric quasigroup needs Damm's far more intricate 2007 construction:
J. Verhoeff's dihedral scheme (*Error detecting decimal codes*, 1969, for D5), generalised by
H. P. Gumm (*A new class of check-digit methods for arbitrary number systems*, IEEE Trans. Inf.
Theory 31 (1985) 102-105) to the dihedral group D_m of order 2m for any odd m. The valid
condition is ``sigma^p1(s1) * sigma^p2(s2) * ... * sigma^0(check) = e``, where ``p`` counts a
symbol's distance from the end and ``sigma`` is the anti-symmetric permutation
``sigma(r^i) = r^-i``, ``sigma(r^i f) = r^(i+1) f`` (``sigma(x) y != sigma(y) x`` for x != y:
rotations give ``r^(j-i)`` vs ``r^(i-j)``, equal only if ``2(i - j) = 0 mod m``; reflections
likewise; mixed pairs differ by one rotation step). Group => substitutions caught;
anti-symmetry of sigma => adjacent transpositions caught. As a state machine the table depends
on the position, with period 2m.

n = 2 has no scheme (a single check bit cannot tell ``01`` from ``10``), so it is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from functools import lru_cache

__all__ = ["CheckScheme", "scheme_for", "supports"]

Table = tuple[tuple[int, ...], ...]

# Damm's order-10 table as published (Damm 2004; Wikipedia "Damm algorithm"): zero diagonal.
DAMM_10: Table = (
    (0, 3, 1, 7, 5, 9, 8, 6, 4, 2),
    (7, 0, 9, 2, 1, 5, 4, 8, 6, 3),
    (4, 2, 0, 6, 8, 7, 1, 3, 5, 9),
    (1, 7, 5, 0, 9, 8, 3, 4, 2, 6),
    (6, 1, 2, 3, 0, 4, 5, 9, 7, 8),
    (3, 6, 7, 4, 2, 0, 9, 5, 8, 1),
    (5, 8, 6, 9, 7, 2, 0, 1, 3, 4),
    (8, 9, 4, 5, 3, 6, 2, 0, 1, 7),
    (9, 4, 3, 8, 6, 1, 7, 2, 0, 5),
    (2, 5, 8, 1, 4, 3, 6, 7, 9, 0),
)

# Irreducible polynomials for GF(2^k), k = 2..8 (bit k set), used to multiply by the element x.
_GF_POLY = {2: 0b111, 3: 0b1011, 4: 0b10011, 5: 0b100101, 6: 0b1000011, 7: 0b10000011, 8: 0b100011011}


@dataclass(frozen=True, slots=True)
class CheckScheme:
    """A check-symbol scheme for an alphabet of ``n`` symbols.

    ``tables[p % len(tables)][state][symbol]`` is the next state for a symbol that stands ``p``
    places from the end of the full sequence (the check symbol itself has ``p = 0``).
    ``check_for[state]`` is the check symbol that completes a payload leaving ``state``.
    """

    name: str
    n: int
    tables: tuple[Table, ...]
    check_for: tuple[int, ...]

    @property
    def positional(self) -> bool:
        """True when the transition table depends on the position (Verhoeff-Gumm)."""
        return len(self.tables) > 1

    def table(self, p: int) -> Table:
        return self.tables[p % len(self.tables)]

    def state(self, payload: Sequence[int]) -> int:
        """The state after ``payload``, taken as everything before the check symbol."""
        tables, period = self.tables, len(self.tables)
        s = 0
        p = len(payload)
        for symbol in payload:
            s = tables[p % period][s][symbol]
            p -= 1
        return s

    def check_symbol(self, payload: Sequence[int]) -> int:
        """The check symbol to append to ``payload``."""
        return self.check_for[self.state(payload)]

    def is_valid(self, symbols: Sequence[int]) -> bool:
        """Whether ``symbols`` (payload followed by its check symbol) is consistent."""
        if not symbols:
            return False
        return self.tables[0][self.state(symbols[:-1])][symbols[-1]] == 0


def supports(n: int) -> bool:
    """Whether a check symbol is available for an alphabet of ``n`` symbols."""
    return n >= 3


@lru_cache(maxsize=64)
def scheme_for(n: int) -> CheckScheme:
    """The check scheme for an alphabet of ``n`` symbols (``ValueError`` for n < 3)."""
    if n < 3:
        raise ValueError(
            f"check characters need an alphabet of at least 3 symbols, not {n}: with 2 symbols no "
            "single check symbol can catch every swap of two neighbouring symbols"
        )
    if n == 10:
        return _damm(n, DAMM_10)
    if n % 4 == 2:
        return _verhoeff_gumm(n // 2)
    return _damm(n, _ta_quasigroup(n))


def _damm(n: int, table: Table) -> CheckScheme:
    check_for = tuple(row.index(0) for row in table)
    return CheckScheme(name=f"damm-{n}", n=n, tables=(table,), check_for=check_for)


def _ta_quasigroup(n: int) -> Table:
    """A totally anti-symmetric quasigroup of order ``n`` (n odd, or n = 2^k * m, k >= 2)."""
    k = (n & -n).bit_length() - 1  # the power of two in n
    m = n >> k
    if k == 1:
        raise ValueError(f"no product construction for order {n}")
    odd = tuple(tuple((2 * x - y) % m for y in range(m)) for x in range(m))
    if k == 0:
        return odd
    if k not in _GF_POLY:
        raise ValueError(f"order {n} is too large")
    q, poly = 1 << k, _GF_POLY[k]

    def times_x(g: int) -> int:
        g <<= 1
        return g ^ poly if g & q else g

    gf = tuple(tuple(times_x(x) ^ y for y in range(q)) for x in range(q))
    return tuple(tuple(gf[x // m][y // m] * m + odd[x % m][y % m] for y in range(n)) for x in range(n))


def _verhoeff_gumm(m: int) -> CheckScheme:
    """Gumm's scheme over the dihedral group D_m (m odd): element ``s*m + i`` is ``r^i f^s``."""
    n = 2 * m

    def mul(x: int, y: int) -> int:
        s1, i1 = divmod(x, m)
        s2, i2 = divmod(y, m)
        return (s1 ^ s2) * m + (i1 + (i2 if s1 == 0 else -i2)) % m

    # sigma(r^i) = r^-i, sigma(r^i f) = r^(i+1) f; its order is lcm(2, m) = 2m.
    sigma = tuple((-i) % m if s == 0 else m + (i + 1) % m for s, i in (divmod(x, m) for x in range(n)))
    tables = []
    power = tuple(range(n))  # sigma^p
    for _ in range(2 * m):
        tables.append(tuple(tuple(mul(state, power[d]) for d in range(n)) for state in range(n)))
        power = tuple(sigma[x] for x in power)
    inverse = tuple(next(y for y in range(n) if mul(x, y) == 0) for x in range(n))
    return CheckScheme(name=f"verhoeff-gumm-{n}", n=n, tables=tuple(tables), check_for=inverse)
