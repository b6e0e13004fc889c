"""The console's HTML: every value escaped, no inline script or style (the
Content-Security-Policy forbids both), forms that carry the session's CSRF token.

The live tables are built once as rows of cells (`Table`); the page renders them as
HTML, and `/api/...` sends the same rows as JSON for `static/console.js` to put in
place, so the two never disagree.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from html import escape
from typing import Any
from urllib.parse import quote, urlencode

from daemon.status import format_age as age
from daemon.status import format_size as size

Cell = str | dict[str, Any]
"""Text, or {"text", "href"} (a link), or {"spark": [numbers]} (a sparkline), or
{"post", "fields", "label", "id"} (a button that POSTs `fields` and the CSRF token)."""
Table = list[list[Cell]]


def _e(value: object) -> str:
    return escape(str(value), quote=True)


def rate(octets_per_second: float) -> str:
    """Bytes per second as bits per second, the way links are rated."""
    bits = octets_per_second * 8
    for unit in ("bit/s", "kbit/s", "Mbit/s", "Gbit/s"):
        if bits < 1000 or unit == "Gbit/s":
            return f"{bits:.0f} {unit}" if unit == "bit/s" else f"{bits:.1f} {unit}"
        bits /= 1000
    return f"{bits:.1f} Gbit/s"  # pragma: no cover


def _cell(cell: Cell, csrf: str) -> str:
    if isinstance(cell, str):
        return f"<td>{_e(cell)}</td>"
    if "post" in cell:
        form = button_form(cell["post"], cell["label"], csrf, cell["fields"],
                           button_id=cell.get("id"))  # fmt: skip
        return f"<td>{form}</td>"
    if "href" in cell:
        return f'<td><a href="{_e(cell["href"])}">{_e(cell["text"])}</a></td>'
    # The sparkline is drawn by the script; without it the cell stays empty.
    values = ",".join(f"{v:.0f}" for v in cell.get("spark", []))
    return f'<td class="spark" data-spark="{_e(values)}"></td>'


def table(
    table_id: str, headers: Sequence[str], rows: Table, *, live: bool = True, csrf: str = ""
) -> str:
    head = "".join(f"<th>{_e(h)}</th>" for h in headers)
    body = "".join("<tr>" + "".join(_cell(c, csrf) for c in row) + "</tr>" for row in rows)
    attr = f' id="{_e(table_id)}" data-live="1"' if live else f' id="{_e(table_id)}"'
    return f"<table><thead><tr>{head}</tr></thead><tbody{attr}>{body}</tbody></table>"


def layout(title: str, body: str, *, admin: str | None, csrf: str, notice: str | None) -> str:
    nav = ""
    if admin is not None:
        nav = (
            '<nav><a href="/">Overview</a> <a href="/remote-access">Remote access</a>'
            ' <a href="/log">Log</a>'
            f'<span class="who">{_e(admin)}</span>'
            f'<form method="post" action="/logout" class="inline">{csrf_field(csrf)}'
            '<button id="logout">Log out</button></form></nav>'
        )
    flash = f'<p class="notice" id="notice">{_e(notice)}</p>' if notice else ""
    return (
        "<!DOCTYPE html><html lang=en><head><meta charset=utf-8>"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{_e(title)} - lockgate</title>"
        '<link rel="stylesheet" href="/static/console.css">'
        '<script src="/static/console.js" defer></script></head>'
        f"<body><header><h1>lockgate</h1>{nav}</header><main>{flash}"
        f"<h2>{_e(title)}</h2>{body}</main></body></html>"
    )


def csrf_field(csrf: str) -> str:
    return f'<input type="hidden" name="csrf" value="{_e(csrf)}">'


def button_form(action: str, label: str, csrf: str, fields: Mapping[str, str] | None = None,
                *, button_id: str | None = None) -> str:  # fmt: skip
    hidden = "".join(
        f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">' for k, v in (fields or {}).items()
    )
    ident = f' id="{_e(button_id)}"' if button_id else ""
    return (
        f'<form method="post" action="{_e(action)}" class="inline">{csrf_field(csrf)}{hidden}'
        f"<button{ident}>{_e(label)}</button></form>"
    )


def login_page(csrf: str, error: str | None) -> str:
    body = (
        (f'<p class="error" id="error">{_e(error)}</p>' if error else "")
        + '<form method="post" action="/login" class="login">'
        + csrf_field(csrf)
        + '<label>Name <input name="name" id="name" autocomplete="username" required></label>'
        '<label>Password <input name="password" id="password" type="password" '
        'autocomplete="current-password" required></label>'
        '<button id="login">Log in</button></form>'
    )
    return layout("Log in", body, admin=None, csrf=csrf, notice=None)


# ---- the overview ---------------------------------------------------------------------


def gateway_rows(status: Mapping[str, Any], addresses: Iterable[str], ident: str) -> Table:
    daemon = status.get("daemon", {})
    rows: Table = [
        ["Version", f"lockgate {daemon.get('version', '?')}"],
        ["Identity", ident],
        ["Addresses", ", ".join(addresses)],
        ["Uptime", age(daemon.get("uptime", 0))],
        ["Interface", str(daemon.get("interface") or "-")],
    ]
    rows.extend(["Warning", str(w)] for w in daemon.get("warnings", []))
    return rows


def connection_rows(status: Mapping[str, Any], rates: Mapping[str, Any]) -> Table:
    rows: Table = []
    for conn in status.get("connections", []):
        name = conn["name"]
        r = rates.get(name)
        sas = [sa for sa in status.get("sas", []) if sa["connection"] == name]
        rows.append(
            [
                {"text": name, "href": f"/connection/{quote(name, safe='')}"},
                str(conn.get("mode", "policy")),
                f"{conn.get('remote', '?')} ({conn.get('remote_id', '?')})",
                str(conn.get("state", "?")),
                f"in {rate(r.rate_in)}, out {rate(r.rate_out)}" if r is not None else "-",
                {"spark": list(r.history) if r is not None else []},
                f"{size(sum(sa['bytes_in'] for sa in sas))} / "
                f"{size(sum(sa['bytes_out'] for sa in sas))}",
                str(conn.get("last_error") or "-"),
            ]
        )
    return rows


CONNECTION_HEADERS = (
    "Connection", "Mode", "Peer", "State", "Rate", "Last hour", "In / out", "Last error",
)  # fmt: skip


def server_rows(status: Mapping[str, Any]) -> Table:
    return [
        [
            str(s["name"]),
            str(s["protocol"]),
            str(s.get("pool", "-")),
            f"{s['clients']} / {s['max_connections']}",
            str(s.get("users", "-")),
        ]
        for s in status.get("remote_access", [])
    ]


SERVER_HEADERS = ("Server", "Protocol", "Pool", "Clients", "Users")


def overview_tables(
    status: Mapping[str, Any], rates: Mapping[str, Any], addresses: Iterable[str], ident: str
) -> dict[str, Table]:
    return {
        "gateway": gateway_rows(status, addresses, ident),
        "connections": connection_rows(status, rates),
        "servers": server_rows(status),
    }


def overview_page(tables: Mapping[str, Table], **page: Any) -> str:
    body = (
        '<section><h3>Gateway</h3><div class="poll" data-api="/api/overview"></div>'
        + table("gateway", ("", ""), tables["gateway"])
        + "</section><section><h3>Connections</h3>"
        + table("connections", CONNECTION_HEADERS, tables["connections"])
        + "</section><section><h3>Remote-access servers</h3>"
        + table("servers", SERVER_HEADERS, tables["servers"])
        + "</section>"
    )
    return layout("Overview", body, **page)


# ---- one connection -------------------------------------------------------------------


def connection_tables(
    status: Mapping[str, Any], name: str, explained: Mapping[str, Any] | None = None
) -> dict[str, Table]:
    """The connection page's tables from the status document and, when given, what
    `lockgate explain NAME` answers (`daemon.diagnosis.explain`), a row per line."""
    conn: Mapping[str, Any] = next(
        (c for c in status.get("connections", []) if c["name"] == name), {}
    )
    ike: Table = [
        [
            f"#{sa['id']}",
            str(sa["suite"]),
            f"{sa['local']} - {sa['remote']}",
            "initiator" if sa.get("initiator") else "responder",
            age(sa.get("age", 0)),
            f"#{sa['rekeyed_from']}" if sa.get("rekeyed_from") is not None else "-",
            str(sa.get("udp_encap") or "-"),
            "yes" if sa.get("ppk_used") else "no",
        ]
        for sa in conn.get("ike_sas", [])
    ]
    child: Table = [
        [
            f"#{sa['unique_id']}",
            f"{sa['suite']}{' esn' if sa.get('esn') else ''} ({sa['encap']})",
            f"{' '.join(sa['local_ts'])} === {' '.join(sa['remote_ts'])}",
            f"in {sa['spi_in']} out {sa['spi_out']}",
            age(sa["age"]),
            f"{size(sa['bytes_in'])}, {sa['packets_in']} packets",
            f"{size(sa['bytes_out'])}, {sa['packets_out']} packets",
            ", ".join(f"{k} {v}" for k, v in sorted(sa.get("drops", {}).items())) or "none",
        ]
        for sa in status.get("sas", [])
        if sa["connection"] == name
    ]
    summary: Table = [
        ["State", str(conn.get("state", "?"))],
        ["Peer", f"{conn.get('remote', '?')} ({conn.get('remote_id', '?')})"],
        ["Mode", str(conn.get("mode", "policy"))],
        ["Subnets", f"{' '.join(conn.get('local_ts', []))} === "
                    f"{' '.join(conn.get('remote_ts', []))}"],
        ["Last error", str(conn.get("last_error") or "-")],
    ]  # fmt: skip
    text = str(explained.get("text") or "") if explained is not None else ""
    diagnosis: Table = [[line.strip()] for line in text.splitlines() if line.strip()]
    return {"summary": summary, "diagnosis": diagnosis, "ike": ike, "child": child}


IKE_HEADERS = ("IKE SA", "Algorithms", "Addresses", "Role", "Age", "Rekeyed from", "NAT", "PPK")
CHILD_HEADERS = (
    "CHILD SA", "Algorithms", "Selectors", "SPIs", "Age", "In", "Out", "Drops",
)  # fmt: skip


def connection_page(name: str, tables: Mapping[str, Table], csrf: str, **page: Any) -> str:
    base = f"/connection/{quote(name, safe='')}"
    buttons = "".join(
        button_form(f"{base}/{action}", label, csrf, button_id=action)
        for action, label in (
            ("up", "Up"),
            ("down", "Down"),
            ("rekey", "Rekey"),
            ("rekey-ike", "Rekey IKE"),
        )
    )
    body = (
        f'<div class="poll" data-api="/api{_e(base)}"></div>'
        f'<div class="actions">{buttons}</div>'
        + table("summary", ("", ""), tables["summary"])
        + "<h3>Diagnosis (lockgate explain)</h3>"
        + table("diagnosis", ("",), tables.get("diagnosis", []))
        + "<h3>IKE SAs</h3>"
        + table("ike", IKE_HEADERS, tables["ike"])
        + "<h3>CHILD SAs</h3>"
        + table("child", CHILD_HEADERS, tables["child"])
    )
    return layout(f"Connection {name}", body, csrf=csrf, **page)


# ---- remote access --------------------------------------------------------------------


def client_rows(clients: Sequence[Mapping[str, Any]]) -> Table:
    """The connected point-to-cloud clients, each with its disconnect button."""
    return [
        [
            *(str(c[k]) for k in ("server", "user", "virtual_ip", "remote", "since")),
            f"{size(c['bytes_in'])} / {size(c['bytes_out'])}",
            {
                "post": "/remote-access/disconnect",
                "fields": {"server": str(c["server"]), "user": str(c["user"])},
                "label": "Disconnect",
                "id": f"disconnect-{c['server']}-{c['user']}",
            },
        ]
        for c in clients
    ]


CLIENT_HEADERS = ("Server", "User", "Address", "From", "Since", "In / out", "")


def remote_access_page(
    servers: Sequence[Mapping[str, Any]], clients: Table, csrf: str, **page: Any
) -> str:
    """`servers`: each {name, protocol, auth, groups, users: [User], formats};
    `clients`: `client_rows`."""
    body = (
        '<section><h3>Connected clients</h3><div class="poll" data-api="/api/clients"></div>'
        + table("clients", CLIENT_HEADERS, clients, csrf=csrf)
        + "</section>"
    )
    for server in servers:
        body += _server_section(server, csrf)
    return layout("Remote access", body, csrf=csrf, **page)


def _server_section(server: Mapping[str, Any], csrf: str) -> str:
    name = str(server["name"])
    base = "/remote-access/users"
    target = {"server": name}
    password = server["auth"] != "certificate"
    rows = ""
    for user in server["users"]:
        who = {"server": name, "user": user.name}
        settings = (
            f'<form method="post" action="{base}/set" class="inline">{csrf_field(csrf)}'
            + _hidden(who)
            + f'<input name="group" value="{_e(user.group or "")}" placeholder="group" size=10>'
            + '<input name="static_ip" placeholder="static IP" size=12 value="'
            + _e(user.static_ip if user.static_ip is not None else "")
            + '"><button>Set</button></form>'
        )
        reset = (
            f'<form method="post" action="{base}/password" class="inline">{csrf_field(csrf)}'
            + _hidden(who)
            + '<input name="password" type="password" autocomplete="new-password" '
            'placeholder="new password" size=12><button>Reset password</button></form>'
            if password
            else ""
        )
        profiles = " ".join(
            f'<a class="profile" href="{_e(_profile_href(name, user.name, fmt))}">{_e(fmt)}</a>'
            for fmt in server["formats"]
        )
        rows += (
            f"<tr><td>{_e(user.name)}</td><td>{settings}</td><td>{reset}</td>"
            f"<td>{profiles}</td><td>"
            + button_form(f"{base}/delete", "Delete", csrf, who, button_id=f"delete-{user.name}")
            + "</td></tr>"
        )
    add = (
        f'<form method="post" action="{base}/add" class="add">{csrf_field(csrf)}'
        + _hidden(target)
        + f'<input name="user" id="add-user-{_e(name)}" placeholder="name" required size=12>'
        + (
            f'<input name="password" id="add-password-{_e(name)}" type="password" '
            'autocomplete="new-password" placeholder="password" size=12>'
            if password
            else ""
        )
        + '<input name="group" placeholder="group (optional)" size=12>'
        '<input name="static_ip" placeholder="static IP (optional)" size=14>'
        f'<button id="add-{_e(name)}">Add user</button></form>'
    )
    groups = ", ".join(server["groups"]) or "none"
    return (
        f"<section><h3>{_e(name)} ({_e(server['protocol'])}, auth {_e(server['auth'])}, "
        f"groups: {_e(groups)})</h3>"
        "<table><thead><tr><th>User</th><th>Group, static IP</th><th>Password</th>"
        f'<th>Profile</th><th></th></tr></thead><tbody id="users-{_e(name)}">{rows}</tbody>'
        f"</table>{add}</section>"
    )


def _hidden(fields: Mapping[str, str]) -> str:
    return "".join(
        f'<input type="hidden" name="{_e(k)}" value="{_e(v)}">' for k, v in fields.items()
    )


def _profile_href(server: str, user: str, fmt: str) -> str:
    query = urlencode({"user": user, "format": fmt})
    return f"/remote-access/{quote(server, safe='')}/profile?{query}"


# ---- the log --------------------------------------------------------------------------


def log_page(rows: Table, connections: Sequence[str], selected: str | None, **page: Any) -> str:
    options = "".join(
        f'<option value="{_e(name)}"{" selected" if name == selected else ""}>{_e(name)}</option>'
        for name in connections
    )
    query = "?" + urlencode({"connection": selected}) if selected else ""
    body = (
        '<form method="get" action="/log" class="add"><select name="connection" id="connection">'
        f'<option value="">every connection</option>{options}</select>'
        '<button id="filter">Show</button></form>'
        f'<div class="poll" data-api="/api/log{_e(query)}"></div>'
        + table("log", ("Time", "Level", "Source", "Message"), rows)
    )
    return layout("Log", body, **page)
