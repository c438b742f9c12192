"""What the admin pages share: the sign-in (the admin token asked once in a form; the browser then holds an
HttpOnly cookie with a digest of it, never the token, compared in constant time), the page frame (server-rendered,
no script, no CDN, readable on a phone), tables, and sending HTML."""

from __future__ import annotations

import hashlib
import hmac
import html
from urllib.parse import parse_qs

from megagate.asgi import Receive, Scope, Send, header, read_body

COOKIE = b"megagate_admin"
STYLE = """body{font:14px system-ui,sans-serif;margin:1rem;color:#222}h1{font-size:1.2rem}
h2{font-size:1rem;margin-top:1.5rem}.scroll{overflow-x:auto}table{border-collapse:collapse;min-width:100%}
td,th{padding:.3rem .5rem;border-bottom:1px solid #ddd;text-align:left;white-space:nowrap}.ok{color:#080}
.cooling{color:#b60}.disabled{color:#c00}small{color:#666}.unpriced{color:#c00;font-weight:600}
.bar{display:inline-block;width:8rem;height:.6rem;background:#eee;vertical-align:middle}
.bar span{display:block;height:100%;background:#48a}.bar .over{background:#c33}svg{max-width:100%;height:auto}"""


def admin_digest(token: str) -> str:
    return hashlib.sha256(b"megagate-admin:" + token.encode()).hexdigest()


def signed_in(scope: Scope, digest: str) -> bool:
    raw = header(scope, b"cookie") or b""
    for part in raw.split(b";"):
        name, _, value = part.strip().partition(b"=")
        if name == COOKIE:
            return hmac.compare_digest(value.decode("latin-1"), digest)
    return False


async def sign_in(scope: Scope, receive: Receive, send: Send, digest: str, then: str) -> None:
    """`POST .../login`: the form's token → the cookie, and back to the page `then` (below the mount point)."""
    form = parse_qs((await read_body(receive, 4096)).decode("utf-8", "replace"))
    token = (form.get("token") or [""])[0]
    if not hmac.compare_digest(admin_digest(token), digest):
        await send_html(send, 401, page("megagate: sign in", "<p>Wrong token.</p>" + login_form(scope)))
        return
    cookie = COOKIE + b"=" + digest.encode() + b"; Path=/; HttpOnly; SameSite=Strict"
    location = (scope.get("root_path", "") + then).encode()
    await send({"type": "http.response.start", "status": 303,
                "headers": [(b"location", location), (b"set-cookie", cookie), (b"content-length", b"0")]})  # fmt: skip
    await send({"type": "http.response.body", "body": b""})


def login_form(scope: Scope) -> str:
    action = html.escape(scope.get("root_path", "") + "/admin/login")
    return (f'<form method="post" action="{action}"><label>Admin token <input name="token" type="password" '
            'autocomplete="current-password" required></label> <button>Sign in</button></form>')  # fmt: skip


def table(headings: list[str], rows: list[list[str]]) -> str:
    """Cells are HTML: escape what came from outside before it goes in."""
    if not rows:
        return ""
    head = "".join(f"<th>{h}</th>" for h in headings)
    body = "".join("<tr>" + "".join(f"<td>{cell}</td>" for cell in row) + "</tr>" for row in rows)
    return f'<div class="scroll"><table><tr>{head}</tr>{body}</table></div>'


def page(title: str, body: str, *, refresh: int | None = None) -> bytes:
    meta = f'<meta http-equiv="refresh" content="{refresh}">' if refresh else ""
    return (f'<!doctype html><html lang="en"><head><meta charset="utf-8"><meta name="viewport" '
            f'content="width=device-width, initial-scale=1">{meta}<title>{title}</title><style>{STYLE}</style></head>'
            f"<body><h1>{title}</h1>{body}</body></html>").encode()  # fmt: skip


async def send_html(send: Send, status: int, body: bytes) -> None:
    headers = [(b"content-type", b"text/html; charset=utf-8"), (b"content-length", str(len(body)).encode()),
               (b"cache-control", b"no-store")]  # fmt: skip
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
