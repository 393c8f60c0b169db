"""Issuing codes into a campaign: generate batches, import CSVs, export CSVs.

Generation writes in chunks, each its own transaction, so memory stays flat and progress is
visible while a million codes land; a collision with an existing code simply leaves the
chunk short and the shortfall is generated again.
"""

from __future__ import annotations

import codecs
import csv
import io
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime

from pydantic import ValidationError
from sqlalchemy import Connection, Engine, bindparam, update
from sqlalchemy.exc import IntegrityError
from sqlmodel import Session, col, func, select

from plugin.campaigns import figures
from plugin.campaigns.lookup import campaign_format, get_campaign
from plugin.errors import CapacityError, InvalidInput
from plugin.formats import codes
from plugin.rules import CampaignRules, RulesOverride, apply_override
from plugin.rules.recipients import normalise_recipient
from plugin.store.bulk import existing_codes, insert_codes
from plugin.store.db import session_scope
from plugin.store.models import Batch, Campaign, Code, utcnow

CHUNK_SIZE = 50_000
MAX_BATCH = 10_000_000
MAX_FRUITLESS_CHUNKS = 5
MAX_IMPORT_CODE_LENGTH = 64
ProgressCallback = Callable[[int, int], None]  # (created so far, requested)


def check_capacity(fmt: codes.CodeFormat, *, existing: int, count: int) -> None:
    """Refuse up front a batch that would make the format's codes guessable, with the numbers."""
    problem = codes.capacity_error(fmt, existing, count)
    if problem is not None:
        raise CapacityError(problem)


def live_codes_of_format(session: Session, *, shop_id: int, fmt: codes.CodeFormat, now: datetime) -> int:
    """Live codes (active, not past an explicit expiry) of every campaign of the shop with this
    code format: at checkout any of them answers a guess, so together they fill the format's space."""
    formats = session.exec(select(Campaign.id, Campaign.code_format).where(col(Campaign.shop_id) == shop_id)).all()
    sharing = [cid for cid, data in formats if codes.CodeFormat.from_dict(data) == fmt]
    return figures.active_codes(session, [int(cid or 0) for cid in sharing], now=now)


def start_batch(session: Session, *, shop_id: int, campaign_id: int, count: int, source: str = "generated") -> Batch:
    """Validate a generation request and record its batch (status queued)."""
    if count < 1 or count > MAX_BATCH:
        raise InvalidInput(f"count must be between 1 and {MAX_BATCH:,}", reason="invalid_count")
    campaign = get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
    fmt = campaign_format(campaign)
    check_capacity(fmt, existing=live_codes_of_format(session, shop_id=shop_id, fmt=fmt, now=utcnow()), count=count)
    batch = Batch(shop_id=shop_id, campaign_id=campaign_id, source=source, requested=count, status="queued")
    session.add(batch)
    session.flush()
    return batch


def run_batch(engine: Engine, *, shop_id: int, batch_id: int, on_progress: ProgressCallback | None = None) -> Batch:
    """Generate the batch's codes chunk by chunk; safe to re-run after a crash (it tops up)."""
    with session_scope(engine) as session:
        batch = session.exec(select(Batch).where(Batch.id == batch_id, Batch.shop_id == shop_id)).one()
        campaign = get_campaign(session, shop_id=shop_id, campaign_id=batch.campaign_id)
        fmt = campaign_format(campaign)
        batch.status = "running"
        created = _count_batch(session, batch.campaign_id, batch_id)
    fruitless = 0
    try:
        while created < batch.requested:
            wanted = min(CHUNK_SIZE, batch.requested - created)
            fresh = codes.generate(fmt, wanted)
            with engine.begin() as conn:
                landed = insert_codes(
                    conn,
                    shop_id=shop_id,
                    campaign_id=batch.campaign_id,
                    batch_id=batch_id,
                    codes=fresh,
                    created_at=utcnow(),
                )
                created += landed
                # A safe format almost never collides; chunk after chunk of nothing but
                # collisions means the space is exhausted, so stop rather than spin.
                fruitless = fruitless + 1 if landed == 0 else 0
                if fruitless >= MAX_FRUITLESS_CHUNKS:
                    raise CapacityError(f"no new codes could be found after {fruitless} attempts: the format is full")
                conn.execute(update(Batch).where(col(Batch.id) == batch_id).values(created=created))
            if on_progress is not None:
                on_progress(created, batch.requested)
    except Exception as exc:
        with session_scope(engine) as session:
            failed = session.get_one(Batch, batch_id)
            failed.status, failed.error, failed.finished_at = "failed", str(exc)[:2000], utcnow()
        raise
    with session_scope(engine) as session:
        done = session.get_one(Batch, batch_id)
        done.status, done.created, done.finished_at = "done", created, utcnow()
        return done


def _count_batch(session: Session, campaign_id: int, batch_id: int) -> int:
    stmt = select(func.count()).select_from(Code).where(col(Code.campaign_id) == campaign_id, col(Code.batch_id) == batch_id)
    return int(session.exec(stmt).one())


def generate_codes(
    engine: Engine, *, shop_id: int, campaign_id: int, count: int, on_progress: ProgressCallback | None = None
) -> Batch:
    """Generate `count` new unique codes into the campaign, in the foreground."""
    with session_scope(engine) as session:
        batch = start_batch(session, shop_id=shop_id, campaign_id=campaign_id, count=count)
    assert batch.id is not None
    return run_batch(engine, shop_id=shop_id, batch_id=batch.id, on_progress=on_progress)


# --- CSV import -----------------------------------------------------------------------------


@dataclass(frozen=True)
class RowError:
    row: int  # 1-based line number in the file, header included
    value: str
    reason: str

    def __str__(self) -> str:
        return f"row {self.row}: {self.reason} ({self.value!r})"


class ImportRejected(InvalidInput):
    """The CSV had bad rows; nothing was imported."""

    reason = "import_rejected"

    def __init__(self, errors: list[RowError]) -> None:
        shown = "; ".join(str(e) for e in errors[:20])
        more = f"; and {len(errors) - 20} more" if len(errors) > 20 else ""
        super().__init__(
            f"{len(errors)} bad row(s), nothing imported: {shown}{more}",
            details={"errors": [e.__dict__ for e in errors[:1000]]},
        )
        self.errors = errors


@dataclass(frozen=True)
class DecodedImport:
    text: str
    encoding: str  # a Python codec name
    detected_by: str  # "named" (the caller's), "byte-order mark", "utf-8", or "fallback" (not UTF-8)


# a byte-order mark names its encoding; UTF-32's is tried first, it begins with UTF-16's
_BOMS = (
    (codecs.BOM_UTF32_LE, "utf-32"),
    (codecs.BOM_UTF32_BE, "utf-32"),
    (codecs.BOM_UTF8, "utf-8-sig"),
    (codecs.BOM_UTF16_LE, "utf-16"),
    (codecs.BOM_UTF16_BE, "utf-16"),
)


def decode_import(data: bytes, encoding: str | None = None) -> DecodedImport:
    """The text of an uploaded CSV: in `encoding` when named; else as its byte-order mark says;
    else UTF-8; else cp1252 (what Excel on Windows writes), and Latin-1 for the few bytes cp1252
    leaves undefined. A wrong guess can't import a mangled code: every encoding guessed here reads
    ASCII as ASCII, and a code's letters are ASCII (anything else fails its row). UTF-16 without
    a byte-order mark is the one thing a guess would misread, so its NUL bytes are refused."""
    if encoding is not None:
        try:
            codecs.lookup(encoding)
        except LookupError:
            raise InvalidInput(f"unknown encoding {encoding!r}", reason="import_encoding") from None
        return DecodedImport(_decode(data, encoding), encoding, "named")
    for bom, name in _BOMS:
        if data.startswith(bom):
            return DecodedImport(_decode(data, name), name, "byte-order mark")
    if b"\x00" in data:
        raise InvalidInput(
            "the file holds NUL bytes, as UTF-16 or UTF-32 without a byte-order mark does",
            reason="import_encoding",
        )
    try:
        return DecodedImport(data.decode("utf-8"), "utf-8", "utf-8")
    except UnicodeDecodeError:
        pass
    try:
        return DecodedImport(data.decode("cp1252"), "cp1252", "fallback")
    except UnicodeDecodeError:
        return DecodedImport(data.decode("latin-1"), "latin-1", "fallback")  # decodes any bytes


def _decode(data: bytes, encoding: str) -> str:
    try:
        text = data.decode(encoding)
    except UnicodeDecodeError as exc:
        before = data[: exc.start].decode(encoding, errors="replace")
        line, column = before.count("\n") + 1, len(before) - before.rfind("\n")
        raise InvalidInput(f"the file is not valid {encoding} (line {line}, column {column})", reason="import_encoding") from None
    return text.removeprefix("\ufeff")  # a UTF-8 byte-order mark read as plain UTF-8


def import_lines(text: str) -> Iterator[str]:
    """The lines of decoded CSV text, as the csv module wants them (newlines kept, untranslated)."""
    return iter(io.StringIO(text, newline=""))


@dataclass(frozen=True)
class ImportRow:
    """One row of an import: its line number, the raw code, why it is not a code (if it is not),
    and the raw `email` / `customer_id` cells that bind the code (when the header names them)."""

    number: int
    raw: str
    problem: str | None = None
    email: str = ""
    customer_id: str = ""


_CODE_HEADERS = ("code", "coupon", "coupon code")
_BINDING_HEADERS = ("email", "customer_id")


def _read_import_rows(lines: Iterable[str]) -> Iterator[ImportRow]:
    """The rows of a CSV with a `code` column (and optionally `email` and/or `customer_id`
    columns, which bind each code), or a single headerless column of codes; a row that is not
    a code says why: a quote never closed or closed mid-value, or a quoted value over several
    lines. Parsed strictly: leniently, a stray quote swallows the lines after it, and those
    would land as one code."""
    read: list[str] = []  # the lines of the row being parsed, for messages

    def feed() -> Iterator[str]:
        for line in lines:
            read.append(line)
            yield line

    reader = csv.reader(feed(), strict=True)
    code_index = 0
    binding: dict[str, int] = {}  # header name → column, for the binding columns the header names
    end = 0  # the last line of the previous row
    while True:
        read.clear()
        try:
            row = next(reader)
        except StopIteration:
            return
        except csv.Error as exc:  # the reader goes on at the next line
            start, end = end + 1, reader.line_num
            yield ImportRow(start, _first_line(read), _csv_problem(exc))
            continue
        start, end = end + 1, reader.line_num
        if end > start:
            yield ImportRow(start, _first_line(read), f"a quoted value runs over lines {start}-{end} (a code is one line)")
            continue
        if start == 1:
            lowered = [cell.strip().lower() for cell in row]
            if any(c in _CODE_HEADERS for c in lowered):
                code_index = next(i for i, c in enumerate(lowered) if c in _CODE_HEADERS)
                binding = {c: i for i, c in reversed(list(enumerate(lowered))) if c in _BINDING_HEADERS}
                continue
            if any(c in _BINDING_HEADERS for c in lowered):
                raise InvalidInput(
                    "the header (line 1) names no code column: name it `code` beside `email` / `customer_id`",
                    reason="import_rejected",
                )
        if not row or all(not cell.strip() for cell in row):
            continue
        cells = {name: row[i] if i < len(row) else "" for name, i in binding.items()}
        raw = row[code_index] if code_index < len(row) else ""
        yield ImportRow(start, raw, None, cells.get("email", ""), cells.get("customer_id", ""))


def _first_line(read: list[str]) -> str:
    return read[0].rstrip("\r\n")[:80] if read else ""


def _csv_problem(exc: csv.Error) -> str:
    message = str(exc)
    if "end of data" in message:
        return "a quote opened on this line is never closed"
    if "expected after" in message:
        return "text follows a closing quote (quote the whole value, or not at all)"
    return f"not valid CSV ({message})"


def _normalise_import(fmt: codes.CodeFormat, raw: str) -> tuple[str | None, str | None]:
    """(stored form, None) or (None, why the row is bad)."""
    value = raw.strip()
    if not value:
        return None, "empty code"
    stored = codes.normalise_generic(value)
    if not stored:
        return None, "no letters or digits"
    if len(stored) > MAX_IMPORT_CODE_LENGTH:
        return None, f"longer than {MAX_IMPORT_CODE_LENGTH} characters"
    if not stored.isascii() or not stored.isalnum():
        return None, "only letters and digits (and separators) are allowed"
    # A code typed in the campaign's own format is normalised the same way shoppers' input will be.
    in_format = codes.normalise(fmt, value)
    if codes.check(fmt, in_format) is codes.CodeCheck.OK:
        return in_format, None
    return stored, None


@dataclass(frozen=True)
class _Binding:
    """Who alone may use an imported code, and the recipient it is assigned to."""

    email: str | None
    customer_id: str | None

    @property
    def recipient(self) -> str:
        # the customer id is the more precise key when both are given (as the checkout decides)
        return f"id:{self.customer_id}" if self.customer_id is not None else str(self.email)


def _import_binding(row: ImportRow) -> tuple[_Binding | None, str | None]:
    """(the row's binding or None when its cells are empty, None) or (None, why they are bad)."""
    email = customer_id = None
    try:
        if row.email.strip():
            email = normalise_recipient(email=row.email)
        if row.customer_id.strip():
            customer_id = normalise_recipient(customer_id=row.customer_id)[3:]
    except InvalidInput as exc:
        return None, exc.message
    if email is None and customer_id is None:
        return None, None
    return _Binding(email, customer_id), None


def import_codes(engine: Engine, *, shop_id: int, campaign_id: int, lines: Iterable[str]) -> Batch:
    """Import codes from CSV lines (`import_lines` of `decode_import`'s text): all rows land, or
    none do and every bad row is reported by its line number.

    A row's `email` and/or `customer_id` (columns the header names) bind its code: only that
    person may use it, as a claim under the `claim` policy binds, and the code is assigned to
    them (a later claim by them answers with it; no claim hands it to anyone else). A campaign
    gives one code per person, so a person named twice, or already holding one, is a bad row."""
    with session_scope(engine) as session:
        campaign = get_campaign(session, shop_id=shop_id, campaign_id=campaign_id)
        fmt = campaign_format(campaign)
        rules = CampaignRules.model_validate(campaign.rules) if campaign.rules else None
    errors: list[RowError] = []
    first_row: dict[str, int] = {}
    bindings: dict[str, _Binding] = {}  # stored code → its binding
    person_row: dict[str, int] = {}  # recipient → its first row
    for row in _read_import_rows(lines):
        stored, problem = (None, row.problem) if row.problem else _normalise_import(fmt, row.raw)
        binding, bad_binding = _import_binding(row) if stored is not None else (None, None)
        if stored is None:
            errors.append(RowError(row.number, row.raw, problem or "invalid"))
        elif stored in first_row:
            errors.append(RowError(row.number, row.raw, f"duplicate of row {first_row[stored]}"))
        elif bad_binding is not None:
            errors.append(RowError(row.number, row.raw, bad_binding))
        elif binding is not None and binding.recipient in person_row:
            same = person_row[binding.recipient]
            errors.append(RowError(row.number, row.raw, f"names the same person as row {same} (one code per person)"))
        else:
            first_row[stored] = row.number
            if binding is not None:
                bindings[stored] = binding
                person_row[binding.recipient] = row.number
    if not first_row and not errors:
        raise InvalidInput("the file holds no codes", reason="import_empty")
    with engine.connect() as conn:
        taken = existing_codes(conn, shop_id=shop_id, codes=first_row)
        holders = _holders(conn, campaign_id=campaign_id, recipients=list(person_row))
    errors.extend(RowError(first_row[c], c, "already exists in this shop") for c in taken)
    errors.extend(RowError(person_row[r], r, "this person already holds a code of this campaign") for r in holders)
    if errors:
        raise ImportRejected(sorted(errors, key=lambda e: e.row))
    with session_scope(engine) as session:
        batch = Batch(shop_id=shop_id, campaign_id=campaign_id, source="imported", requested=len(first_row), status="running")
        session.add(batch)
        session.flush()
        assert batch.id is not None
        landed = insert_codes(
            session.connection(),
            shop_id=shop_id,
            campaign_id=campaign_id,
            batch_id=batch.id,
            codes=list(first_row),
            created_at=utcnow(),
        )
        if landed != len(first_row):
            # another import raced us for the same codes: refuse the whole file
            raise InvalidInput("some codes were added by someone else meanwhile; nothing imported", reason="import_conflict")
        _bind_imported(session, shop_id=shop_id, bindings=bindings, rules=rules)
        batch.created, batch.status, batch.finished_at = landed, "done", utcnow()
        return batch


def _holders(conn: Connection, *, campaign_id: int, recipients: list[str]) -> set[str]:
    """Which of these recipients already hold a code of the campaign."""
    found: set[str] = set()
    named = col(Code.recipient).in_(bindparam("r", expanding=True))
    stmt = select(col(Code.recipient)).where(col(Code.campaign_id) == campaign_id, named)
    for start in range(0, len(recipients), 500):
        found.update(r for r in conn.execute(stmt, {"r": recipients[start : start + 500]}).scalars() if r is not None)
    return found


def _bind_imported(session: Session, *, shop_id: int, bindings: dict[str, _Binding], rules: CampaignRules | None) -> None:
    """Bind and assign the imported codes that name a person (one executemany)."""
    if not bindings:
        return
    now = utcnow()
    relative = rules.time.relative_expiry if rules else None
    expires = now + relative.delta() if relative is not None and relative.after == "assignment" else None
    stmt = (
        update(Code)
        .where(col(Code.shop_id) == shop_id, col(Code.code) == bindparam("c"))
        .values(email=bindparam("e"), customer_id=bindparam("i"), recipient=bindparam("r"), assigned_at=now, expires_at=expires)
    )
    params = [{"c": c, "e": b.email, "i": b.customer_id, "r": b.recipient} for c, b in bindings.items()]
    try:
        with session.begin_nested():
            session.connection().execute(stmt, params)
    except IntegrityError:  # a claim gave one of these people a code meanwhile
        raise InvalidInput(
            "a person named in the file got a code of this campaign meanwhile; nothing imported", reason="import_conflict"
        ) from None


# --- CSV export -----------------------------------------------------------------------------

EXPORT_COLUMNS = ("code", "stored_code", "status", "uses", "batch_id", "sync_status", "created_at")
EXPORT_PAGE = 5_000


def export_codes(engine: Engine, *, shop_id: int, campaign_id: int) -> Iterator[str]:
    """The campaign's codes as CSV text, streamed page by page (keyset pagination)."""
    with session_scope(engine) as session:
        fmt = campaign_format(get_campaign(session, shop_id=shop_id, campaign_id=campaign_id))
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(EXPORT_COLUMNS)
    yield _drain(buffer)
    last_id = 0
    while True:
        with Session(engine) as session:
            page = session.exec(
                select(Code)
                .where(col(Code.shop_id) == shop_id, col(Code.campaign_id) == campaign_id, col(Code.id) > last_id)
                .order_by(col(Code.id))
                .limit(EXPORT_PAGE)
            ).all()
        if not page:
            return
        for code in page:
            writer.writerow(
                (
                    codes.display(fmt, code.code) if codes.check(fmt, code.code) is codes.CodeCheck.OK else code.code,
                    code.code,
                    code.status,
                    code.uses,
                    code.batch_id,
                    code.sync_status,
                    code.created_at.isoformat(),
                )
            )
        last_id = page[-1].id or last_id
        yield _drain(buffer)


def _drain(buffer: io.StringIO) -> str:
    text = buffer.getvalue()
    buffer.seek(0)
    buffer.truncate()
    return text


def set_override(batch: Batch, campaign: Campaign, override: RulesOverride) -> None:
    """Give a batch its own rules where a batch may differ (discount, expiry, uses, channels)."""
    if campaign.rules:
        try:
            apply_override(CampaignRules.model_validate(campaign.rules), override)
        except ValidationError as exc:
            raise InvalidInput(f"the override doesn't fit the campaign's rules: {exc.errors()[0]['msg']}") from exc
    batch.rules_override = override.model_dump(mode="json")
