"""The Dash app factory and the server behind `attnprof serve`.

`create_app(db)` builds a fresh app each call (nothing exists at import time), so tests and the benchmark make as
many as they like. The app only reads the database; no input on the page is executed or used as a path or query
text: filter values are compared with column values, the two roofline numbers are parsed as floats.
"""

from __future__ import annotations

import errno
import ipaddress
from pathlib import Path

from attnprof.dashboard.data import DataSource
from attnprof.errors import UsageError


def create_app(store_or_db, refresh_ms: int = 2000, warm: bool = True):
    """A Dash app over a database path (or an open `Store`, whose path is used: each request opens its own
    connection). `refresh_ms`: how often the page looks for new runs and rows, so a running sweep shows up live.
    `warm`: load the newest run and fit its first views on a background thread now, before anyone asks."""
    import dash

    from attnprof.dashboard import layout
    from attnprof.dashboard.callbacks import Callbacks, register

    path = getattr(store_or_db, "path", store_or_db)
    app = dash.Dash(__name__, title="attnprof", update_title=None, serve_locally=True)
    app.attnprof = Callbacks(DataSource(Path(path)))  # the handlers, for tests and the benchmark
    # A function: each page load gets the current runs and its first run's filters with the layout. The static page
    # is the validation layout (every id, no data), so Dash does not call the function, reading the database, here.
    app.validation_layout = layout.build(refresh_ms)
    app.layout = lambda: layout.prefill(layout.build(refresh_ms), app.attnprof.initial_props(_wanted_selection()))
    register(app, app.attnprof)
    if warm:
        import threading

        from attnprof.dashboard.pages import warm_up

        threading.Thread(target=warm_up, args=(app.attnprof.source,), name="attnprof-warm-up", daemon=True).start()
    return app


def _wanted_selection() -> dict:
    """The selection in the address of the page being loaded: the renderer fetches the layout from a URL of its own,
    and the page's address comes as the request's referrer (same origin: sent whole)."""
    import flask

    from attnprof.dashboard.address import wanted

    return wanted(flask.request.referrer) if flask.has_request_context() else {}


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve to any interface


def serve(db, host: str = "127.0.0.1", port: int = 8050, open_browser: bool = False, say=print) -> None:
    """Serve the dashboard until interrupted. `say` gets the one-line notes (exposure, database state)."""
    if Path(db).exists():
        from attnprof.store import Store

        Store.open(db, create=False).close()  # a file that is not an attnprof database: one line and exit 2, not a served error page
    _check_port_free(host, port)
    if not is_loopback(host):
        say(f"warning: listening on {host}: anyone who can reach this machine on port {port} can read the database {str(db)!r}")
    if not Path(db).exists():
        say(_missing_database_note(Path(db)))
    app = create_app(db)
    shown = "127.0.0.1" if host in ("0.0.0.0", "::") else host
    url = f"http://{f'[{shown}]' if ':' in shown else shown}:{port}/"
    if open_browser:
        import threading
        import webbrowser

        threading.Timer(1.0, webbrowser.open, [url]).start()
    say(f"attnprof dashboard on {url} (Ctrl-C stops it)")
    serve_wsgi(app.server, host, port)


def _missing_database_note(db: Path) -> str:
    """Serving a database that does not exist yet is how a user watches a sweep they start next; but a typo in its
    folder would leave the page empty forever, so a missing folder is named (a file in the way cannot ever work)."""
    in_the_way = next((p for p in db.parents if p.exists() and not p.is_dir()), None)
    if in_the_way is not None:
        raise UsageError(f"cannot serve {str(db)!r}: {str(in_the_way)!r} is a file, not a folder")
    folder = next(p for p in db.parents if p.exists())
    if folder != db.parent:
        missing = f"no database at {str(db)!r} yet, and no folder {str(db.parent)!r} either"
        return f"note: {missing} (check the path): a sweep with this --db creates both"
    return f"note: no database at {str(db)!r} yet; the page will show its runs once a sweep creates it"


def serve_wsgi(server_app, host: str, port: int) -> None:
    """Werkzeug's threaded server, without `app.run`'s banners: Flask's development-server warning in red, Dash's
    and Werkzeug's own "running on" lines and one log line per request (each callback is one) buried the line above.
    Ctrl-C ends it quietly."""
    import logging

    from werkzeug.serving import make_server

    logging.getLogger("werkzeug").setLevel(logging.WARNING)  # errors still show
    server = make_server(host, port, server_app, threaded=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.server_close()


def _check_port_free(host: str, port: int) -> None:
    """A port already taken is a usage error (one line, exit 2), found before the app is built; the server
    itself would print a multi-line message and exit 1."""
    import socket

    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as error:
        raise UsageError(f"cannot listen on host {host!r}: {error.strerror}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server sets it: TIME_WAIT is no conflict
        try:
            probe.bind(address)
        except OSError as error:
            # a port in use wants another --port; an address this machine does not have wants another --host
            hint = "pick another with --port" if error.errno == errno.EADDRINUSE else "pick an address of this machine with --host"
            raise UsageError(f"cannot listen on {host}:{port}: {error.strerror} ({hint})") from None
