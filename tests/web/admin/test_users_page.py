"""People (standalone): an owner invites someone with a role through a signed one-time link for
their email (never "whoever arrives first"), changes roles, removes logins; staff manage nobody;
each change is one audit row naming the owner; shops apart; bad input beside its field."""

from __future__ import annotations

import re
import time
from collections.abc import Callable

from itsdangerous import TimestampSigner
from sqlalchemy import Engine
from sqlmodel import Session, col, select

from plugin.settings import Settings
from plugin.shops import users
from plugin.store.models import AdminUser, AuditEvent
from tests.web.admin.conftest import PASSWORD, SHOP, TestClient, add_shop, form_token, session_token, set_up_owner

OWNER = "owner@shop.example"


def invite(web: TestClient, email: str, role: str) -> tuple[int, str]:
    token = form_token(web.get("/admin/users").text)
    answer = web.post("/admin/users/invite", data={"csrf_token": token, "email": email, "role": role})
    found = re.search(r'id="invite-link" class="secret" readonly value="([^"]+)"', answer.text)
    return answer.status_code, found[1] if found else ""


def accept(client: TestClient, settings: Settings, link: str, *, email: str = "", password: str = PASSWORD) -> object:
    path = link.removeprefix(settings.public_url)
    page = client.get(path)
    assert page.status_code == 200, page.text
    return client.post(
        path, data={"csrf_token": form_token(page.text), "email": email, "password": password, "confirm": password}
    )


def audit_rows(engine: Engine, shop_id: int, prefix: str) -> list[tuple[str, str, str, dict]]:
    with Session(engine) as session:
        rows = session.exec(
            select(AuditEvent).where(col(AuditEvent.shop_id) == shop_id, col(AuditEvent.action).startswith(prefix))
        ).all()
        return [(e.action, e.actor, e.subject, e.details) for e in rows]


def user(engine: Engine, shop_id: int, email: str) -> AdminUser:
    with Session(engine) as session:
        return session.exec(select(AdminUser).where(col(AdminUser.shop_id) == shop_id, col(AdminUser.email) == email)).one()


def test_an_owner_invites_staff_who_set_their_password_once(
    web, admin_app, engine: Engine, admin_settings: Settings, shop_id: int
) -> None:
    set_up_owner(web, admin_settings, shop_id, email=OWNER)
    status, link = invite(web, "Staff@Shop.Example", "staff")
    assert status == 201 and "/admin/setup?token=" in link
    assert audit_rows(engine, shop_id, "admin_user.") == [
        (
            "admin_user.invited",
            f"user:1:{OWNER}",
            "admin_invite:staff@shop.example",
            {"email": "staff@shop.example", "role": "staff"},
        )
    ]
    assert link not in web.get("/admin/users").text  # shown once, on the answer only
    with TestClient(admin_app, base_url="http://127.0.0.1:8000", follow_redirects=False) as newcomer:
        page = newcomer.get(link.removeprefix(admin_settings.public_url))
        assert "staff@shop.example" in page.text and "Create staff login" in page.text
        # the link is for that email only: what the form claims instead is ignored
        done = accept(newcomer, admin_settings, link, email="someone-else@evil.example")
        assert done.status_code == 303 and done.headers["location"] == "/admin/"
        people = newcomer.get("/admin/users")
        assert people.status_code == 200 and "staff@shop.example" in people.text
        assert 'id="invite-form"' not in people.text and "/remove" not in people.text  # staff manage nobody
        staff_token = form_token(people.text)
        for path, data in (
            ("/admin/users/invite", {"email": "x@shop.example", "role": "owner"}),
            ("/admin/users/1/role", {"role": "staff"}),
            ("/admin/users/1/remove", {}),
        ):
            refused = newcomer.post(path, data={"csrf_token": staff_token, **data})
            assert refused.status_code == 403 and refused.json()["reason"] == "owner_only"
        newcomer.cookies.clear()
        again = newcomer.get(link.removeprefix(admin_settings.public_url))
        assert again.status_code == 400 and "already used" in again.text and "owner for a new link" in again.text
    staff = user(engine, shop_id, "staff@shop.example")
    assert staff.role == "staff" and staff.password_hash.startswith("$argon2id$")
    with Session(engine) as session:
        assert session.exec(select(AdminUser).where(col(AdminUser.email) == "someone-else@evil.example")).first() is None
    accepted = audit_rows(engine, shop_id, "admin.invite_accepted")
    assert accepted == [("admin.invite_accepted", f"user:{staff.id}:staff@shop.example", f"admin_user:{staff.id}",
                         {"role": "staff", "invited_by": "admin_user:1"})]  # fmt: skip


def test_bad_invites_are_shown_next_to_their_field(web, admin_settings: Settings, shop_id: int, engine: Engine) -> None:
    set_up_owner(web, admin_settings, shop_id, email=OWNER)
    token = form_token(web.get("/admin/users").text)
    bad_email = web.post("/admin/users/invite", data={"csrf_token": token, "email": "not an email", "role": "staff"})
    assert bad_email.status_code == 422
    assert re.search(r'id="f-email"[^>]*aria-invalid="true" aria-describedby="e-email"', bad_email.text)
    assert 'value="not an email"' in bad_email.text  # what they typed is kept
    bad_role = web.post("/admin/users/invite", data={"csrf_token": token, "email": "a@shop.example", "role": "admin"})
    assert bad_role.status_code == 422 and 'id="e-role"' in bad_role.text and "owner or staff" in bad_role.text
    existing = web.post("/admin/users/invite", data={"csrf_token": token, "email": OWNER.upper(), "role": "staff"})
    assert existing.status_code == 422 and 'id="e-email"' in existing.text and "already has a login" in existing.text
    assert web.post("/admin/users/invite", data={"email": "a@shop.example", "role": "staff"}).status_code == 403  # CSRF
    assert audit_rows(engine, shop_id, "admin_user.") == []  # refusals change nothing


def test_roles_change_and_the_shop_keeps_an_owner(web, admin_app, engine: Engine, admin_settings: Settings, shop_id: int) -> None:
    set_up_owner(web, admin_settings, shop_id, email=OWNER)
    _, link = invite(web, "second@shop.example", "staff")
    with TestClient(admin_app, base_url="http://127.0.0.1:8000", follow_redirects=False) as second:
        assert accept(second, admin_settings, link).status_code == 303
    second_id = user(engine, shop_id, "second@shop.example").id
    token = form_token(web.get("/admin/users").text)
    # the only owner can't step down
    alone = web.post("/admin/users/1/role", data={"csrf_token": token, "role": "staff"})
    assert alone.status_code == 409 and 'id="e-user-1"' in alone.text and "needs an owner" in alone.text
    assert 'aria-describedby="e-user-1"' in alone.text
    bad = web.post(f"/admin/users/{second_id}/role", data={"csrf_token": token, "role": "god"})
    assert bad.status_code == 422 and f'id="e-user-{second_id}"' in bad.text
    promoted = web.post(f"/admin/users/{second_id}/role", data={"csrf_token": token, "role": "owner"})
    assert promoted.status_code == 303
    assert user(engine, shop_id, "second@shop.example").role == "owner"
    # now there is another owner: the first may step down
    assert web.post("/admin/users/1/role", data={"csrf_token": token, "role": "staff"}).status_code == 303
    assert user(engine, shop_id, OWNER).role == "staff"
    assert web.get("/admin/settings").text.count("Create key") == 0  # staff now: owner-only forms are gone
    changes = audit_rows(engine, shop_id, "admin_user.role_changed")
    assert [(a, actor, subject, d["from"], d["to"]) for a, actor, subject, d in changes] == [
        ("admin_user.role_changed", f"user:1:{OWNER}", f"admin_user:{second_id}", "staff", "owner"),
        ("admin_user.role_changed", f"user:1:{OWNER}", "admin_user:1", "owner", "staff"),
    ]


def test_removing_someone_ends_their_sessions(
    web, admin_app, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    set_up_owner(web, admin_settings, shop_id, email=OWNER)
    _, link = invite(web, "leaver@shop.example", "staff")
    with TestClient(admin_app, base_url="http://127.0.0.1:8000", follow_redirects=False) as leaver:
        assert accept(leaver, admin_settings, link).status_code == 303
        assert leaver.get("/admin/").status_code == 200
        leaver_id = user(engine, shop_id, "leaver@shop.example").id
        token = form_token(web.get("/admin/users").text)
        myself = web.post("/admin/users/1/remove", data={"csrf_token": token})
        assert myself.status_code == 409 and "remove yourself" in myself.text and 'id="e-user-1"' in myself.text
        assert web.post(f"/admin/users/{leaver_id}/remove", data={}).status_code == 403  # CSRF
        gone = web.post(f"/admin/users/{leaver_id}/remove", data={"csrf_token": token})
        assert gone.status_code == 303
        assert leaver.get("/admin/").status_code == 303  # signed out at once
        signin = leaver.get("/admin/sign-in")
        again = leaver.post(
            "/admin/sign-in",
            data={"csrf_token": form_token(signin.text), "email": "leaver@shop.example", "password": PASSWORD},
        )
        assert again.status_code == 422
    assert "leaver@shop.example" not in web.get("/admin/users").text
    assert [(a, actor, s) for a, actor, s, _ in audit_rows(engine, shop_id, "admin_user.removed")] == [
        ("admin_user.removed", f"user:1:{OWNER}", f"admin_user:{leaver_id}")
    ]
    # invited back: the same row, enabled again with the new password
    _, back = invite(web, "leaver@shop.example", "staff")
    with TestClient(admin_app, base_url="http://127.0.0.1:8000", follow_redirects=False) as returning:
        assert accept(returning, admin_settings, back).status_code == 303
    assert user(engine, shop_id, "leaver@shop.example").id == leaver_id


def test_another_shops_people_are_out_of_reach(
    web, admin_app, engine: Engine, admin_settings: Settings, shop_id: int, other_shop_id: int
) -> None:
    with TestClient(admin_app, base_url="http://127.0.0.1:8000", follow_redirects=False) as theirs:
        set_up_owner(theirs, admin_settings, other_shop_id, email="them@other.example")
        _, link = invite(theirs, "their-staff@other.example", "staff")
    with TestClient(admin_app, base_url="http://127.0.0.1:8000", follow_redirects=False) as their_staff:
        assert accept(their_staff, admin_settings, link).status_code == 303
    their_staff_id = user(engine, other_shop_id, "their-staff@other.example").id
    set_up_owner(web, admin_settings, shop_id, email=OWNER)
    page = web.get("/admin/users").text
    assert "them@other.example" not in page and "their-staff@other.example" not in page
    token = form_token(page)
    for path, data in ((f"/admin/users/{their_staff_id}/role", {"role": "owner"}), (f"/admin/users/{their_staff_id}/remove", {})):
        answer = web.post(path, data={"csrf_token": token, **data})
        assert answer.status_code == 404 and answer.json()["reason"] == "user_not_found"
    unchanged = user(engine, other_shop_id, "their-staff@other.example")
    assert unchanged.role == "staff" and unchanged.disabled_at is None
    assert audit_rows(engine, shop_id, "admin_user.role") == audit_rows(engine, shop_id, "admin_user.removed") == []


def test_embedded_surfaces_manage_people_on_the_platform(web, engine: Engine) -> None:
    shop_id = add_shop(engine, "shopify", SHOP)
    auth = {"Authorization": f"Bearer {session_token()}"}
    page = web.get("/admin/users", params={"shop": SHOP, "id_token": session_token()})
    assert page.status_code == 200 and 'id="users-embedded"' in page.text and 'id="invite-form"' not in page.text
    csrf = re.search(r'data-csrf="([^"]+)"', page.text)
    assert csrf
    refused = web.post(
        "/admin/users/invite", headers={**auth, "X-CSRF-Token": csrf[1]}, data={"email": "a@b.example", "role": "staff"}
    )
    assert refused.status_code == 409 and refused.json()["reason"] == "not_standalone"
    assert audit_rows(engine, shop_id, "admin_user.") == []


def test_a_printed_setup_link_lasts_a_day_an_invite_three(
    web, engine: Engine, admin_settings: Settings, shop_id: int, monkeypatch
) -> None:
    def made_hours_ago(hours: int, make: Callable[[], str]) -> str:
        with monkeypatch.context() as m:
            m.setattr(TimestampSigner, "get_timestamp", lambda _self: int(time.time()) - hours * 3600)
            return make().removeprefix(admin_settings.public_url)

    def invite_link(email: str) -> str:
        with Session(engine) as session:
            return users.invite_link(session, admin_settings, shop_id=shop_id, email=email, role="staff", invited_by=1)

    assert web.get(made_hours_ago(23, lambda: users.setup_link(admin_settings, shop_id))).status_code == 200
    stale = web.get(made_hours_ago(25, lambda: users.setup_link(admin_settings, shop_id)))
    assert stale.status_code == 400 and "expired" in stale.text
    assert web.get(made_hours_ago(71, lambda: invite_link("a@shop.example"))).status_code == 200
    assert web.get(made_hours_ago(73, lambda: invite_link("b@shop.example"))).status_code == 400
