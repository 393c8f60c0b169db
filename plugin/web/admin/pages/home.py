"""Home: is the app set up and working, and the key figures (plugin.overview.home)."""

from __future__ import annotations

from starlette.requests import Request
from starlette.responses import Response

from plugin.overview.home import home as read_home
from plugin.settings import Settings
from plugin.store.models import utcnow
from plugin.store.units import in_thread, reading
from plugin.web.admin.context import AdminContext
from plugin.web.admin.render import render
from plugin.web.admin.routing import page


async def home(request: Request, ctx: AdminContext) -> Response:
    engine, settings = request.app.state.engine, request.app.state.settings
    assert isinstance(settings, Settings)

    def read() -> object:
        with reading(engine) as session:
            return read_home(session, settings, ctx.shop_id, now=utcnow())

    facts = await in_thread(engine, read)
    return render(request, ctx, "admin/home.html", home=facts, nav="home")


routes = [page("/", home, name="admin_home")]
