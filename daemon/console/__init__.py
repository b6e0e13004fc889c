"""The web console (`[console]`): an HTTPS server on the daemon's own event loop.

`tls` (its certificate), `auth` (admins, sessions, CSRF tokens, the login rate limit:
no I/O), `traffic` (per-connection rates and the last hour's samples), `logs` (the
last log lines), `pages` (the HTML, escaped, with no inline script or style) and `app`
(the aiohttp application: routes, security headers, actions through
`daemon.commands`). `static/` holds the one script and style sheet it serves; nothing
comes from the network.
"""
