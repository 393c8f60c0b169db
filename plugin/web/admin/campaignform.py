"""The campaign form: plain fields for the common rules, a JSON editor for the rest (tiers,
bundles, item selectors, channels, stacking...), both turned into `CampaignRules`, and each
mistake put next to the field that holds it.

Amounts are typed in major units ("12.50") and stored in minor units of the campaign's currency.
The JSON editor holds what the plain fields don't; on submit it is merged over them, so its keys
win (a tiered discount, say, replaces the plain discount)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal, InvalidOperation
from typing import Any

from pydantic import ValidationError

from plugin.distribution.poolhealth import DEFAULT_ALERT_BELOW, Policy
from plugin.formats import codes
from plugin.rules import CampaignRules
from plugin.rules.refusals import minor_unit_exponent
from plugin.web.admin.forms import Form

DISCOUNT_TYPES = ("percentage", "fixed", "free_shipping", "advanced")
ALPHABETS = ("safe", "numeric", "alphanumeric", "alphabetic")
BINDINGS = ("shareable", "claim")
ON_CANCEL = ("restore", "reissue", "keep")  # CampaignRules.on_cancel
POOL_FIELDS = ("pool_alert_below", "pool_topup_below", "pool_topup_count")
FORMAT_FIELDS = ("alphabet", "length", "prefix", "suffix", "pattern", "group_size", "check_chars")
# where a rules validation error is shown: the longest matching path prefix names the field
_RULE_FIELDS = (
    ("currency", "currency"),
    ("discount", "discount_value"),
    ("time.starts_at", "starts_at"),
    ("time.ends_at", "ends_at"),
    ("usage.uses_per_code", "uses_per_code"),
    ("usage.uses_per_customer", "uses_per_customer"),
    ("basket.minimum_subtotal", "minimum_subtotal"),
    ("budget.max_redemptions", "max_redemptions"),
    ("budget.max_discount", "max_discount"),
    ("distribution.binding", "binding"),
    ("distribution.remind_days_before_expiry", "remind_days_before_expiry"),
    ("on_cancel", "on_cancel"),
)


class FormErrors(Exception):
    """Bad input, already placed on the form."""

    def __init__(self, form: Form) -> None:
        super().__init__("; ".join(f"{k}: {v}" for k, v in form.errors.items()))
        self.form = form


# --- form → rules -------------------------------------------------------------------------------


def _int(form: Form, name: str, *, low: int = 1) -> int | None:
    raw = form.get(name).strip()
    if not raw:
        return None
    try:
        value = int(raw)
    except ValueError:
        form.errors[name] = "a whole number, please"
        return None
    if value < low:
        form.errors[name] = f"at least {low}"
        return None
    return value


def _money(form: Form, name: str, currency: str) -> int | None:
    """A major-unit amount ("12.50") in minor units; refuses more decimals than the currency has."""
    raw = form.get(name).strip()
    if not raw:
        return None
    exponent = minor_unit_exponent(currency)
    try:
        value = Decimal(raw)
    except InvalidOperation:
        form.errors[name] = "an amount like 12.50"
        return None
    minor = value.scaleb(exponent)
    if not value.is_finite() or minor != minor.to_integral_value():
        form.errors[name] = f"{currency} amounts have {exponent} decimal places"
        return None
    if minor <= 0:
        form.errors[name] = "more than zero"
        return None
    return int(minor)


def _when(form: Form, name: str) -> str | None:
    """A `datetime-local` value, read as UTC (the page says so)."""
    raw = form.get(name).strip()
    if not raw:
        return None
    try:
        parsed = datetime.fromisoformat(raw)
    except ValueError:
        form.errors[name] = "a date and time like 2027-01-31T23:59"
        return None
    return (parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)).isoformat()


def _discount(form: Form, currency: str) -> dict[str, Any] | None:
    kind = form.get("discount_type", "percentage")
    if kind not in DISCOUNT_TYPES:
        form.errors["discount_type"] = "choose a discount type"
        return None
    if kind == "advanced":
        return None  # from the JSON editor
    if kind == "free_shipping":
        return {"type": "free_shipping"}
    raw = form.get("discount_value").strip()
    if not raw:
        form.errors["discount_value"] = "how much off?"
        return None
    if kind == "fixed":
        amount = _money(form, "discount_value", currency)
        return {"type": "fixed", "amount": amount} if amount is not None else None
    try:
        percent = Decimal(raw)
    except InvalidOperation:
        form.errors["discount_value"] = "a percentage like 15"
        return None
    return {"type": "percentage", "percent": str(percent)}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        out[key] = _merge(out[key], value) if isinstance(value, dict) and isinstance(out.get(key), dict) else value
    return out


def _advanced(form: Form) -> dict[str, Any]:
    raw = form.get("rules_json").strip()
    if not raw:
        return {}
    try:
        data = json.loads(raw)
    except json.JSONDecodeError as exc:
        form.errors["rules_json"] = f"not valid JSON: {exc.msg} (line {exc.lineno}, column {exc.colno})"
        return {}
    if not isinstance(data, dict):
        form.errors["rules_json"] = 'a JSON object, like {"allowed_channels": ["web"]}'
        return {}
    return data


def _field_of(loc: tuple[Any, ...]) -> str:
    path = ".".join(str(p) for p in loc)
    for prefix, name in _RULE_FIELDS:
        if path == prefix or path.startswith(prefix + "."):
            return name
    return "rules_json"


def rules_from_form(form: Form, currency: str) -> CampaignRules:
    """The rules the form describes, or FormErrors with each mistake beside its field."""
    plain: dict[str, Any] = {"currency": currency}
    discount = _discount(form, currency)
    if discount is not None:
        plain["discount"] = discount
    plain["time"] = {"starts_at": _when(form, "starts_at"), "ends_at": _when(form, "ends_at")}
    plain["usage"] = {"uses_per_code": _int(form, "uses_per_code"), "uses_per_customer": _int(form, "uses_per_customer")}
    plain["basket"] = {"minimum_subtotal": _money(form, "minimum_subtotal", currency)}
    plain["budget"] = {
        "max_redemptions": _int(form, "max_redemptions"),
        "max_discount": _money(form, "max_discount", currency),
    }
    binding = form.get("binding", "shareable")
    if binding not in BINDINGS:
        form.errors["binding"] = "shareable or claim"
    plain["distribution"] = {"binding": binding, "remind_days_before_expiry": _int(form, "remind_days_before_expiry")}
    on_cancel = form.get("on_cancel", "restore")
    if on_cancel not in ON_CANCEL:
        form.errors["on_cancel"] = "restore, reissue or keep"
    plain["on_cancel"] = on_cancel
    data = _merge(plain, _advanced(form))
    if form.get("discount_type") == "advanced" and "discount" not in data and "rules_json" not in form.errors:
        form.errors["rules_json"] = 'an advanced discount is set here, e.g. {"discount": {"type": "tiered", "tiers": [...]}}'
    if form.errors:
        raise FormErrors(form)
    try:
        return CampaignRules.model_validate(data)
    except ValidationError as exc:
        for err in exc.errors():
            name = _field_of(tuple(err.get("loc", ())))
            where = ".".join(str(p) for p in err.get("loc", ()))
            form.errors.setdefault(name, f"{where}: {err['msg']}" if name == "rules_json" else str(err["msg"]))
        raise FormErrors(form) from None


def format_from_form(form: Form) -> codes.CodeFormat:
    """The code format the form describes, or FormErrors."""
    data: dict[str, Any] = {}
    alphabet = form.get("alphabet", "safe")
    data["alphabet"] = alphabet if alphabet in ALPHABETS else "safe"
    for name in ("length", "group_size"):
        value = _int(form, name, low=0)
        if value is not None:
            data[name] = value
    for name in ("prefix", "suffix", "pattern"):
        if form.get(name).strip():
            data[name] = form.get(name).strip()
    data["check_chars"] = 1 if form.get("check_chars") else 0
    if form.errors:
        raise FormErrors(form)
    try:
        return codes.CodeFormat.from_dict(data)
    except ValidationError as exc:
        for err in exc.errors():
            loc = [str(p) for p in err.get("loc", ()) if str(p) in FORMAT_FIELDS]
            form.errors.setdefault(loc[0] if loc else "format", str(err["msg"]).removeprefix("Value error, "))
        raise FormErrors(form) from None


def pool_from_form(form: Form) -> Policy:
    """The campaign pool's low-stock thresholds (plugin.distribution.poolhealth), or FormErrors;
    the service checks how they fit together (a top-up needs a count)."""
    alert = _int(form, "pool_alert_below", low=0)
    topup_below = _int(form, "pool_topup_below")
    topup_count = _int(form, "pool_topup_count", low=0)
    if form.errors:
        raise FormErrors(form)
    return Policy(alert_below=DEFAULT_ALERT_BELOW if alert is None else alert, topup_below=topup_below,
                  topup_count=topup_count or 0)  # fmt: skip


def form_with_pool(form: Form, policy: Policy) -> Form:
    form.values.update(
        pool_alert_below=str(policy.alert_below),
        pool_topup_below="" if policy.topup_below is None else str(policy.topup_below),
        pool_topup_count=str(policy.topup_count) if policy.topup_count else "",
    )
    return form


# --- rules → form -------------------------------------------------------------------------------


def _major(minor: int | None, currency: str) -> str:
    if minor is None:
        return ""
    return str(Decimal(minor).scaleb(-minor_unit_exponent(currency)))


def _local(value: str | None) -> str:
    return datetime.fromisoformat(value).astimezone(UTC).strftime("%Y-%m-%dT%H:%M") if value else ""


def _pop(data: dict[str, Any], section: str, *keys: str) -> None:
    part = data.get(section)
    if isinstance(part, dict):
        for key in keys:
            part.pop(key, None)
        if not part:
            data.pop(section)


def form_from_rules(name: str, currency: str, rules: dict[str, Any]) -> Form:
    """The edit form of a campaign: its plain fields, and the JSON of everything else."""
    values: dict[str, str] = {"name": name, "currency": currency}
    parsed = CampaignRules.model_validate(rules) if rules else None
    if parsed is None:
        return Form(values=values)
    data = parsed.model_dump(mode="json", exclude_defaults=True)
    discount = parsed.discount.model_dump(mode="json")
    kind = discount["type"]
    if kind in ("percentage", "fixed", "free_shipping") and not discount.get("max_amount"):
        values["discount_type"] = kind
        values["discount_value"] = str(discount.get("percent") or _major(discount.get("amount"), currency))
        data.pop("discount", None)
    else:
        values["discount_type"] = "advanced"
    values["starts_at"], values["ends_at"] = (
        _local(data.get("time", {}).get("starts_at")),
        _local(data.get("time", {}).get("ends_at")),
    )
    values["uses_per_code"] = str(parsed.usage.uses_per_code or "")
    values["uses_per_customer"] = str(parsed.usage.uses_per_customer or "")
    values["minimum_subtotal"] = _major(parsed.basket.minimum_subtotal, currency)
    values["max_redemptions"] = str(parsed.budget.max_redemptions or "")
    values["max_discount"] = _major(parsed.budget.max_discount, currency)
    values["binding"] = parsed.distribution.binding
    values["remind_days_before_expiry"] = str(parsed.distribution.remind_days_before_expiry or "")
    values["on_cancel"] = parsed.on_cancel
    data.pop("on_cancel", None)
    for section, keys in (
        ("time", ("starts_at", "ends_at")),
        ("usage", ("uses_per_code", "uses_per_customer")),
        ("basket", ("minimum_subtotal",)),
        ("budget", ("max_redemptions", "max_discount")),
        ("distribution", ("binding", "remind_days_before_expiry")),
    ):
        _pop(data, section, *keys)
    for key in ("currency", "version"):
        data.pop(key, None)
    values["rules_json"] = json.dumps(data, indent=2) if data else ""
    return Form(values=values)
