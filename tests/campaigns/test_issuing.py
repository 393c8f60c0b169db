"""Generating, importing and exporting codes, on SQLite and PostgreSQL."""

from __future__ import annotations

import csv
import io

import pytest
from sqlalchemy import Engine, func
from sqlmodel import Session, col, select

from plugin.campaigns import issuing
from plugin.campaigns.campaigns import create_campaign
from plugin.errors import CapacityError, InvalidInput, NotFound
from plugin.formats import codes
from plugin.shops.shops import ensure_local_shop
from plugin.store.db import session_scope
from plugin.store.models import Batch, Code


def _campaign(engine: Engine, shop_id: int, **fmt: object) -> int:
    with session_scope(engine) as session:
        campaign = create_campaign(session, shop_id=shop_id, name="Test", code_format=dict(fmt))
        assert campaign.id is not None
        return campaign.id


def _stored(engine: Engine, campaign_id: int) -> list[str]:
    with Session(engine) as session:
        return list(session.exec(select(Code.code).where(col(Code.campaign_id) == campaign_id)).all())


def test_generate_writes_unique_valid_codes_in_chunks(engine: Engine, shop_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(issuing, "CHUNK_SIZE", 700)
    campaign_id = _campaign(engine, shop_id, pattern="BF-####-####-##", check_chars=1)
    seen: list[int] = []
    batch = issuing.generate_codes(
        engine, shop_id=shop_id, campaign_id=campaign_id, count=2_000, on_progress=lambda done, _n: seen.append(done)
    )
    assert (batch.status, batch.created, batch.requested) == ("done", 2_000, 2_000)
    assert seen == [700, 1400, 2000]  # progress per chunk
    stored = _stored(engine, campaign_id)
    assert len(stored) == len(set(stored)) == 2_000
    fmt = codes.CodeFormat(pattern="BF-####-####-##", check_chars=1)
    assert all(codes.check(fmt, c) is codes.CodeCheck.OK for c in stored)
    assert all(c.startswith("BF") for c in stored)


def test_batches_never_repeat_a_code_of_the_shop(engine: Engine, shop_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
    # A rigged generator that returns codes the shop already has forces the collision path.
    first = _campaign(engine, shop_id)
    issuing.generate_codes(engine, shop_id=shop_id, campaign_id=first, count=50)
    taken = _stored(engine, first)
    real_generate = codes.generate
    calls = {"n": 0}

    def colliding(fmt: codes.CodeFormat, n: int, **kw: object) -> list[str]:
        calls["n"] += 1
        fresh = real_generate(fmt, n)
        return (taken[:10] + fresh)[:n] if calls["n"] == 1 else fresh

    monkeypatch.setattr(codes, "generate", colliding)
    second = _campaign(engine, shop_id)
    batch = issuing.generate_codes(engine, shop_id=shop_id, campaign_id=second, count=30)
    assert batch.created == 30
    assert calls["n"] == 2  # the 10 collisions were generated again
    both = _stored(engine, first) + _stored(engine, second)
    assert len(both) == len(set(both)) == 80


def test_generated_codes_avoid_imported_ones(engine: Engine, shop_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
    campaign_id = _campaign(engine, shop_id, length=12)
    issuing.import_codes(engine, shop_id=shop_id, campaign_id=campaign_id, lines=["code", "PARTNER0001", "PARTNER0002"])
    fresh = iter(f"GEN{i:09d}" for i in range(1000))
    calls: list[int] = []

    def rigged(fmt: codes.CodeFormat, n: int, **kw: object) -> list[str]:
        calls.append(n)
        head = ["PARTNER0001"] if len(calls) == 1 else []  # the first chunk hits an imported code
        return head + [next(fresh) for _ in range(n - len(head))]

    monkeypatch.setattr(codes, "generate", rigged)
    batch = issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=5)
    assert batch.created == 5
    stored = _stored(engine, campaign_id)
    assert stored.count("PARTNER0001") == 1 and len(stored) == 7
    assert calls == [5, 1]


def test_unsafe_format_is_refused_up_front_with_numbers(engine: Engine, shop_id: int) -> None:
    campaign_id = _campaign(engine, shop_id, alphabet="numeric", length=4)
    with pytest.raises(CapacityError) as refused:
        issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=20_000)
    assert "20,000" in refused.value.message and "10,000" in refused.value.message
    with Session(engine) as session:
        assert session.exec(select(func.count()).select_from(Batch)).one() == 0
        assert session.exec(select(func.count()).select_from(Code)).one() == 0


@pytest.mark.parametrize("count", [0, -5, issuing.MAX_BATCH + 1])
def test_bad_counts_are_refused(engine: Engine, shop_id: int, count: int) -> None:
    campaign_id = _campaign(engine, shop_id)
    with pytest.raises(InvalidInput, match="count"):
        issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=count)


def test_another_shops_campaign_is_not_found(engine: Engine, shop_id: int) -> None:
    from plugin.shops.shops import ensure_local_shop

    with session_scope(engine) as session:
        other = ensure_local_shop(session, "other.couponry.test").id
    assert other is not None
    campaign_id = _campaign(engine, shop_id)
    with pytest.raises(NotFound):
        issuing.generate_codes(engine, shop_id=other, campaign_id=campaign_id, count=1)
    with pytest.raises(NotFound):
        list(issuing.export_codes(engine, shop_id=other, campaign_id=campaign_id))


def test_import_normalises_and_lands_all_rows(engine: Engine, shop_id: int) -> None:
    campaign_id = _campaign(engine, shop_id)
    lines = ["email,code", "a@x.test, summer-10 ", "b@x.test,WINTER_20", "", "c@x.test,spring 30"]
    batch = issuing.import_codes(engine, shop_id=shop_id, campaign_id=campaign_id, lines=lines)
    assert (batch.source, batch.created) == ("imported", 3)
    assert sorted(_stored(engine, campaign_id)) == ["SPRING30", "SUMMER10", "WINTER20"]


def test_import_reports_every_bad_row_and_imports_nothing(engine: Engine, shop_id: int) -> None:
    campaign_id = _campaign(engine, shop_id)
    issuing.import_codes(engine, shop_id=shop_id, campaign_id=campaign_id, lines=["EXISTING1"])
    lines = ["code", "GOOD1", "good-1", "   ", "ÄÖÜ", "x" * 80, "existing1", "GOOD2", "---"]
    with pytest.raises(issuing.ImportRejected) as rejected:
        issuing.import_codes(engine, shop_id=shop_id, campaign_id=campaign_id, lines=lines)
    by_row = {e.row: e.reason for e in rejected.value.errors}
    assert by_row[3] == "duplicate of row 2"
    assert 4 not in by_row  # a blank line is skipped, not an error
    assert "letters and digits" in by_row[5]
    assert "longer than" in by_row[6]
    assert by_row[7] == "already exists in this shop"
    assert by_row[9] == "no letters or digits"
    assert 2 not in by_row and 8 not in by_row
    assert _stored(engine, campaign_id) == ["EXISTING1"]  # nothing half-imported


def test_import_of_an_empty_file_is_refused(engine: Engine, shop_id: int) -> None:
    campaign_id = _campaign(engine, shop_id)
    with pytest.raises(InvalidInput, match="no codes"):
        issuing.import_codes(engine, shop_id=shop_id, campaign_id=campaign_id, lines=["code", ""])


def test_export_streams_every_code_with_its_display_form(engine: Engine, shop_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(issuing, "EXPORT_PAGE", 7)
    campaign_id = _campaign(engine, shop_id, prefix="VIP-", length=8, group_size=4)
    issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=20)
    chunks = list(issuing.export_codes(engine, shop_id=shop_id, campaign_id=campaign_id))
    assert len(chunks) == 1 + 3  # header, then pages of 7, 7, 6
    rows = list(csv.DictReader(io.StringIO("".join(chunks))))
    assert len(rows) == 20
    assert {r["stored_code"] for r in rows} == set(_stored(engine, campaign_id))
    for row in rows:
        assert row["code"].startswith("VIP-") and row["code"].count("-") == 2
        assert row["code"].replace("-", "") == row["stored_code"]


def test_a_full_format_fails_the_batch_instead_of_spinning(engine: Engine, shop_id: int, monkeypatch: pytest.MonkeyPatch) -> None:
    campaign_id = _campaign(engine, shop_id)
    issuing.import_codes(engine, shop_id=shop_id, campaign_id=campaign_id, lines=["ONLYCODE1"])
    monkeypatch.setattr(codes, "generate", lambda fmt, n, **kw: ["ONLYCODE1"])
    with pytest.raises(CapacityError, match="full"):
        issuing.generate_codes(engine, shop_id=shop_id, campaign_id=campaign_id, count=1)
    with Session(engine) as session:
        batch = session.exec(select(Batch).where(col(Batch.source) == "generated")).one()
    assert batch.status == "failed" and batch.error and "full" in batch.error


def test_capacity_counts_the_live_codes_of_every_campaign_of_the_shop_sharing_the_format(engine: Engine, shop_id: int) -> None:
    """At checkout any live code of the shop answers a guess, so campaigns that share a format
    share its safe capacity (numeric, 11 symbols: at most 1,005 live codes)."""
    fmt = {"alphabet": "numeric", "length": 11}
    first = _campaign(engine, shop_id, **fmt)
    issuing.generate_codes(engine, shop_id=shop_id, campaign_id=first, count=600)
    second = _campaign(engine, shop_id, **fmt)
    with pytest.raises(CapacityError) as refused:
        issuing.generate_codes(engine, shop_id=shop_id, campaign_id=second, count=600)
    assert "600 existing + 600 new = 1,200" in refused.value.message

    # another format, or another shop, has its own space
    longer = _campaign(engine, shop_id, alphabet="numeric", length=12)
    assert issuing.generate_codes(engine, shop_id=shop_id, campaign_id=longer, count=600).created == 600
    with session_scope(engine) as session:
        other_shop = ensure_local_shop(session, "other.couponry.test").id
    assert other_shop is not None
    elsewhere = _campaign(engine, other_shop, **fmt)
    assert issuing.generate_codes(engine, shop_id=other_shop, campaign_id=elsewhere, count=600).created == 600

    # voided codes are not live: they leave room
    with session_scope(engine) as session:
        voided = session.exec(select(Code).where(col(Code.campaign_id) == first).limit(300)).all()
        for code in voided:
            code.status = "voided"
            session.add(code)
    assert issuing.generate_codes(engine, shop_id=shop_id, campaign_id=second, count=600).created == 600


# --- CSV text: encodings and quotes (issue 12, section 6) -------------------------------------


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        ("code,note\nCAFE10,café\n".encode(), "utf-8"),
        ("code,note\nCAFE10,café\n".encode("utf-8-sig"), "utf-8-sig"),
        ("code,note\nCAFE10,café\n".encode("utf-16"), "utf-16"),  # with its byte-order mark
        ("code,note\nCAFE10,café\n".encode("utf-32"), "utf-32"),
        ("code,note\nCAFE10,café 5€\n".encode("cp1252"), "cp1252"),  # Excel on Windows
        ("code,note\nCAFE10,caf\xe9 \x81\n".encode("latin-1"), "latin-1"),  # not even cp1252
    ],
)
def test_import_text_is_decoded_by_its_bom_or_as_utf8_then_cp1252(data: bytes, encoding: str) -> None:
    decoded = issuing.decode_import(data)
    assert decoded.encoding == encoding
    assert decoded.text.startswith("code,note\n") and "CAFE10,caf" in decoded.text


def test_import_text_in_a_named_encoding_or_a_clear_refusal() -> None:
    latin = "code,note\nCAFE10,café\n".encode("latin-1")
    assert issuing.decode_import(latin, "latin-1").text.endswith("café\n")
    with pytest.raises(InvalidInput, match=r"not valid utf-8 \(line 2, column 11\)"):
        issuing.decode_import(latin, "utf-8")
    with pytest.raises(InvalidInput, match="unknown encoding 'klingon'"):
        issuing.decode_import(latin, "klingon")
    # UTF-16 without its byte-order mark is all NULs between ASCII letters: never read as codes
    with pytest.raises(InvalidInput, match=r"NUL bytes, as UTF-16 or UTF-32 without a byte-order mark"):
        issuing.decode_import("code\nCAFE10\n".encode("utf-16-le"))


def test_an_unterminated_quote_is_an_error_naming_its_line_not_a_code(engine: Engine, shop_id: int) -> None:
    campaign_id = _campaign(engine, shop_id)
    text = 'code\nGOOD1\n"BROKEN2\nGOOD3\nGOOD4\n'
    with pytest.raises(issuing.ImportRejected) as rejected:
        issuing.import_codes(engine, shop_id=shop_id, campaign_id=campaign_id, lines=io.StringIO(text, newline=""))
    (error,) = rejected.value.errors
    assert (error.row, error.value) == (3, '"BROKEN2')
    assert "quote" in error.reason and "never closed" in error.reason
    assert "row 3:" in rejected.value.message
    assert _stored(engine, campaign_id) == []


def test_a_quoted_value_over_several_lines_or_with_text_after_its_quote_is_refused(engine: Engine, shop_id: int) -> None:
    campaign_id = _campaign(engine, shop_id)
    text = 'code\n"AB\nCD"\nGOOD5\n"EF"GH\nGOOD6\n'
    with pytest.raises(issuing.ImportRejected) as rejected:
        issuing.import_codes(engine, shop_id=shop_id, campaign_id=campaign_id, lines=io.StringIO(text, newline=""))
    by_row = {e.row: e.reason for e in rejected.value.errors}
    assert set(by_row) == {2, 5}, by_row  # line numbers in the file, counted past the two-line value
    assert "lines 2-3" in by_row[2]
    assert "quote" in by_row[5]
    assert _stored(engine, campaign_id) == []
