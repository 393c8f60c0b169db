"""Answers several admin pages share: a page for what this shop does not have (another shop's
ids answer exactly like ids that never existed: promise 5), and the guessing budgets."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from plugin.checkout.guessing import Budgets
from plugin.errors import PluginError
from plugin.web.admin.context import AdminContext
from plugin.web.admin.render import render


def not_found(request: Request, ctx: AdminContext, exc: PluginError, *, nav: str) -> Response:
    return render(request, ctx, "admin/not_found.html", message=exc.message, nav=nav, status_code=404)


def budgets(request: Request) -> Budgets:
    """Guesses a year an attacker gets at this installation's limits."""
    return Budgets.of(request.app.state.limiter)
