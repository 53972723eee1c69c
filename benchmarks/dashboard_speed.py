"""Dashboard speed on a large database: time to first page render in a real browser, and each callback's answer time.

Builds a database holding one synthetic GPU run of 50,000 measurements (25 impls x 10 lengths x 200 shapes:
batch 5 x heads 5 x dtype 2 x causal 2 x mode 2; 25 timing samples each; every failure status present) and a
second, smaller run to compare against. Then:

* the read path: `Store.frame` + `dashboard.data.run_frame` (from the ended run's snapshot, and from its rows) against
  `Store.measurements` + `export.measurements_frame`;
* each callback called as a plain function, cold (first call: fits computed) and warm (memo hit);
* in headless Chromium (Playwright, /usr/bin/chromium): first render (navigation until the scaling plot has its
  traces) and the `_dash-update-component` round trips for a metric change, an impl filter change and each tab.

Targets: first render < 3 s, each callback < 500 ms.

    python benchmarks/dashboard_speed.py [--rows 50000] [--no-browser] [--db PATH]
"""

from __future__ import annotations

import argparse
import logging
import random
import tempfile
import threading
import time
from pathlib import Path

from attnprof.records import Measurement, RunInfo, Status
from attnprof.spec import Case
from attnprof.store import Store

IMPLS = [(f"impl{i:02d}", 2.0 if i % 3 == 0 else (1.5 if i % 3 == 1 else 1.0)) for i in range(25)]  # name, exponent
LENGTHS = [1024 * 2**i for i in range(10)]  # 1k .. 512k
SHAPES = [(b, h, dt, c, m) for b in (1, 2, 4, 8, 16) for h in (4, 8, 16, 32, 64) for dt in ("bfloat16", "float16")
          for c in (False, True) for m in ("fwd", "fwd_bwd")]  # fmt: skip
ENV = {
    "gpu_name": "NVIDIA H100 80GB HBM3",
    "gpu_total_bytes": 80 * 2**30,
    "torch_version": "2.13.0",
    "cuda_version": "12.8",
    "cpu_threads": 16,
}
RUN_IDS = ("20260101-000000-base", "20260102-000000-main")  # the older, smaller run and the main one
VIEWPORT = {"width": 1500, "height": 1000}
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run", "--disable-quic"]  # fmt: skip


def synthetic_cell(name: str, exponent: float, n: int, shape, rng: random.Random) -> Measurement:
    batch, heads, dtype, causal, mode = shape
    case = Case(impl=name, seq_len=n, batch=batch, heads=heads, head_dim=64, dtype=dtype, device="cuda", causal=causal, mode=mode)
    peak = int(batch * heads * 64 * 2 * 8 * n * (n / 1024) ** (exponent - 1))
    if causal and name.endswith("7"):
        return Measurement(case, Status.UNSUPPORTED, f"{name} has no causal form")
    if peak > 80 * 2**30:
        return Measurement(case, Status.OOM, f"CUDA out of memory: tried to allocate {peak / 2**30:.1f} GiB")
    if rng.random() < 0.004:
        return Measurement(case, rng.choice([Status.TIMEOUT, Status.CRASHED]), "synthetic failure")
    median = 1e-3 * batch * heads * (n / 1024) ** exponent * (2 if mode == "fwd_bwd" else 1)
    times = [median * rng.uniform(0.97, 1.03) for _ in range(25)]
    flops = int(4 * batch * heads * 64 * n * n * (n / 1024) ** (exponent - 2))
    return Measurement(case, Status.OK, "", times, peak_bytes=peak, peak_source="allocator", peak_alloc_bytes=peak,
                       peak_reserved_bytes=int(peak * 1.1), peak_device_bytes=int(peak * 1.2), flops=flops, flops_source="formula",
                       min_bytes=batch * heads * n * 64 * 2 * 4)  # fmt: skip


def build_database(path: Path, rows: int, other_rows: int) -> tuple[str, str]:
    """The main run (`rows` cells) and a smaller, older run (`other_rows` cells, 10% slower) to compare with."""
    store = Store.open(path)
    store.connection.execute("PRAGMA synchronous=OFF")  # a scratch database: durability is not what is measured
    rng = random.Random(0)
    cells = [(name, e, n, shape) for shape in SHAPES for name, e in IMPLS for n in LENGTHS]
    ids = RUN_IDS
    for run_id, count, slow in ((ids[0], other_rows, 1.1), (ids[1], rows, 1.0)):
        store.add_run(RunInfo(run_id, run_id[:8], {"impls": [n for n, _ in IMPLS], "lengths": LENGTHS}, ENV, "0.1.0", state="running"))
        for name, exponent, n, shape in cells[:count]:
            m = synthetic_cell(name, exponent, n, shape, rng)
            m.times_ms = [t * slow for t in m.times_ms]
            store.add_measurement(run_id, m, "2026-01-01T00:00:00")
        store.set_run_state(run_id, "complete")  # as a sweep ends: the run's columnar snapshot is written
    store.close()
    return ids[1], ids[0]


def seconds(function) -> tuple[float, object]:
    started = time.perf_counter()
    value = function()
    return time.perf_counter() - started, value


def read_paths(path: Path, run_id: str) -> list[tuple[str, float]]:
    import pandas  # noqa: F401  (imported before timing: the server has it loaded long before a read)

    from attnprof import columns
    from attnprof.dashboard.data import run_frame
    from attnprof.export import measurements_frame
    from attnprof.store import _column_rows

    store = Store.open(path, create=False)
    snapshot, _ = seconds(lambda: run_frame(run_id, store.frame(run_id)))
    rows, _ = seconds(lambda: run_frame(run_id, columns.to_frame(columns.from_rows(_column_rows(store.connection, run_id)))))
    slow, _ = seconds(lambda: measurements_frame(run_id, store.measurements(run_id)))
    store.close()
    return [
        ("read: Store.frame (ended run: snapshot) + run_frame", snapshot),
        ("read: the same from the rows (a running sweep)", rows),
        ("read: Store.measurements + measurements_frame", slow),
    ]


def callback_timings(app, main_run: str, other_run: str) -> list[tuple[str, float, float]]:
    """(callback, cold ms, warm ms) with the default choices a first page view makes, then user changes."""
    from attnprof.dashboard.views import AXES

    cb = app.attnprof
    empty = {axis: [] for axis in AXES}
    steps = [("refresh (runs list)", lambda: cb.refresh(None, None, None, None, None))]
    state = {}

    def filters():
        state["options"], state["filters"], _, state["facets"], state["budget"], _, _ = cb.filters(
            main_run, "v", None, empty, None, [], 36, "time", "time"
        )
        state["fewer"] = {**state["filters"], "label": state["filters"]["label"][:5]}

    steps += [("filters (run picked: options, defaults)", filters)]
    steps += [
        ("scaling: time", lambda: cb.scaling("scaling", main_run, state["filters"], "time", state["facets"], "v")),
        ("scaling: metric -> peak_bytes", lambda: cb.scaling("scaling", main_run, state["filters"], "peak_bytes", state["facets"], "v")),
        ("scaling: impl filter (5 impls)", lambda: cb.scaling("scaling", main_run, state["fewer"], "time", state["facets"], "v")),
        (
            "exponents (3 metrics, crossovers, frontier)",
            lambda: cb.exponents("exponents", main_run, state["filters"], "time", state["budget"], "v"),
        ),
        ("exponents: budget slider", lambda: cb.exponents("exponents", main_run, state["filters"], "time", 33.0, "v")),
        ("roofline", lambda: cb.roofline("roofline", main_run, state["filters"], None, None, "v")),
        ("roofline: ceilings overridden", lambda: cb.roofline("roofline", main_run, state["filters"], 500, 2.0, "v")),
        ("coverage", lambda: cb.coverage("coverage", main_run, state["filters"], "v")),
        ("compare", lambda: cb.compare("compare", other_run, main_run, state["filters"], "v", main_run)),
        ("run info", lambda: cb.info("info", main_run, "v")),
        ("download CSV (scaling view)", lambda: cb.download(1, "scaling", main_run, state["filters"], other_run, main_run)),
    ]
    results = []
    for name, step in steps:
        cold, _ = seconds(step)
        warm, _ = seconds(step)
        results.append((name, cold * 1e3, warm * 1e3))
    return results


def browser_timings(db: Path) -> list[tuple[str, object]]:
    """First render three ways (fresh server still warming up; warmed server, new browser context with an empty
    cache; reload), then the round trips of user actions."""
    from playwright.sync_api import sync_playwright
    from werkzeug.serving import make_server

    from attnprof.dashboard.app import create_app

    logging.getLogger("werkzeug").setLevel(logging.ERROR)
    app = create_app(db, refresh_ms=60_000)
    served = _timed_requests(app.server)
    server = make_server("127.0.0.1", 0, app.server, threaded=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"http://127.0.0.1:{server.server_port}/"
    timings = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path="/usr/bin/chromium", headless=True, args=CHROMIUM_ARGS)
        timings += _render(browser.new_page(viewport=VIEWPORT), url, "first render, server just started (warm-up running)", served)
        for thread in threading.enumerate():
            if thread.name == "attnprof-warm-up":
                thread.join()
        page = browser.new_context(viewport=VIEWPORT).new_page()  # no HTTP cache: a first visit
        timings += _render(page, url, "first render, warmed server, empty browser cache", served)
        timings += _render(page, url, "reload (browser cache warm)", served)
        timings += _interactions(page, served)
        browser.close()
    server.shutdown()
    return timings


def _render(page, url: str, name: str, served: list) -> list[tuple[str, object]]:
    """Navigation until the scaling plot has its traces, s, and the server time of the requests it caused."""
    served.clear()
    started = time.perf_counter()
    page.goto(url)
    page.wait_for_selector("#scaling-graph .js-plotly-plot .scatterlayer .trace", timeout=60_000)
    elapsed = time.perf_counter() - started
    page.wait_for_timeout(1000)
    return [(f"{name}, s", elapsed), ("  layout and update requests: server time, ms", _summary(served))]


def _timed_requests(flask_app) -> list:
    """Wrap the WSGI app so that the server time and status of each layout (with the first run's state: frame
    load, filters) and _dash-update-component request are recorded."""
    served = []
    inner = flask_app.wsgi_app

    def timed(environ, start_response):
        started = time.perf_counter()
        status = []
        body = b"".join(inner(environ, lambda s, h, *a: status.append(s) or start_response(s, h, *a)))
        if any(path in environ.get("PATH_INFO", "") for path in ("_dash-update-component", "_dash-layout")):
            served.append(((time.perf_counter() - started) * 1e3, status[0][:3], len(body)))
        return [body]

    flask_app.wsgi_app = timed
    return served


def _summary(served: list) -> str:
    answered = [f"{ms:.0f}" for ms, status, _ in served if status == "200"]
    return f"{len(served)} requests, {len(answered)} answered (204: nothing to update): " + ", ".join(answered)


def _interactions(page, served) -> list[tuple[str, object]]:
    """Click -> answer round trip of each user action, ms, and the server time of the requests it caused."""
    actions = [
        ("metric -> peak memory", lambda: page.get_by_label("peak memory (primary source)").check()),
        ("impl filter: untick impl00", lambda: page.locator("#filter-label").get_by_label("impl00", exact=True).uncheck()),
        ("tab: Exponents", lambda: page.get_by_text("Exponents", exact=True).click()),
        ("tab: Roofline", lambda: page.get_by_text("Roofline", exact=True).click()),
        ("tab: Coverage", lambda: page.get_by_text("Coverage", exact=True).click()),
        ("tab: Compare", lambda: page.get_by_text("Compare", exact=True).click()),
        ("tab: Run info", lambda: page.get_by_text("Run info", exact=True).click()),
    ]
    timings = []
    for name, action in actions:
        with page.expect_response(lambda r: "_dash-update-component" in r.url and r.status == 200, timeout=60_000) as answer:
            started = time.perf_counter()
            action()
        answer.value.finished()
        timings.append((f"{name}: click -> first answer, ms", (time.perf_counter() - started) * 1e3))
        page.wait_for_timeout(1500)  # let the page settle (other answers, drawing) before the next action
        timings.append(("  its update requests: server time, ms", _summary(served)))
        served.clear()
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=50_000)
    parser.add_argument("--other-rows", type=int, default=5_000)
    parser.add_argument(
        "--db", type=Path, default=None, help="keep the database here, or reuse it if it exists (default: a temporary folder)"
    )
    parser.add_argument("--no-browser", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        db = args.db or Path(folder) / "speed.db"
        if db.exists():  # a database an earlier run of this benchmark kept (--db): measure it again
            main_run, other_run = RUN_IDS[1], RUN_IDS[0]
            print(f"database: reusing {db}")
        else:
            built, (main_run, other_run) = seconds(lambda: build_database(db, args.rows, args.other_rows))
            print(f"database: {args.rows} + {args.other_rows} measurements written in {built:.1f} s ({db})")
        for name, value in read_paths(db, main_run):
            print(f"  {name:<48} {value * 1e3:8.0f} ms")
        from attnprof.dashboard.app import create_app

        print("callbacks as functions (cold: first call, fits computed; warm: same inputs again), ms:")
        for name, cold, warm in callback_timings(create_app(db, warm=False), main_run, other_run):
            flag = "" if cold < 500 else "  over 500 ms"
            print(f"  {name:<48} {cold:8.0f} {warm:8.0f}{flag}")
        if not args.no_browser and Path("/usr/bin/chromium").exists():
            print("browser (headless Chromium, fresh server):")
            for name, value in browser_timings(db):
                print(
                    f"  {name:<60} {value}"
                    if isinstance(value, str)
                    else f"  {name:<60} {value:8.2f}"
                    if name[-1] == "s"
                    else f"  {name:<60} {value:8.0f}"
                )


if __name__ == "__main__":
    main()
