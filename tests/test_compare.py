"""`attnprof compare` and `attnprof.compare_runs`: two real runs in a real database, cell by cell and by exponent."""

import json

import pytest
from click.testing import CliRunner

import attnprof
from attnprof.cli import cli
from attnprof.dashboard.compare import CELL_COLUMNS, EXPONENT_COLUMNS
from attnprof.store import Store


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    db = tmp_path_factory.mktemp("compare") / "compare.db"
    base = dict(impls="softmax,cosformer", causal="no", heads=2, accounting=True)
    older = attnprof.run_sweep(attnprof.Sweep(lengths=(1024, 2048, 4096), **base), db)
    newer = attnprof.run_sweep(attnprof.Sweep(lengths=(1024, 2048, 4096, 8192), **base), db)
    return db, older, newer


def test_compare_runs_matches_the_shared_cells_and_configurations(two_runs):
    db, older, newer = two_runs
    cells, exponents = attnprof.compare_runs(older, newer, db)
    assert list(cells.columns) == [*CELL_COLUMNS, "score"] and list(exponents.columns) == EXPONENT_COLUMNS
    assert sorted(set(cells["seq_len"])) == [1024, 2048, 4096] and len(cells) == 6  # 2 impls x the 3 shared lengths
    assert (cells["peak_ratio"] == 1.0).all() and set(cells["change"]) == {"same (within 2%)"}  # exact accounting: equal
    peaks = exponents[exponents["metric"] == "peak_bytes"].set_index("config")
    assert peaks.loc["softmax", "exponent_a"] == pytest.approx(2.0, abs=0.02) and not peaks["significant"].any()
    # both fitted over the lengths both measured: each over its own (1k..4k, 1k..8k) read a change of range as one of
    # code (cosFormer's time 1.105 -> 0.729, "significant", where every shared cell agreed within 0.5%)
    assert set(peaks["lengths_a"]) == {"1k..4k"} and set(peaks["lengths_b"]) == {"1k..4k"}
    # the sentence the CLI prints goes with the tables: a notebook was not told which runs, or of cells only one has
    assert cells.attrs["note"].startswith(f"Candidate run {newer} against baseline run {older}. Not compared: 0 cells only")
    assert attnprof.compare_runs(newer, newer, db)[0].attrs["note"].startswith(f"Run {newer} against itself")


def test_the_compare_command_prints_tables_markdown_and_strict_json(two_runs):
    db, older, newer = two_runs
    runner = CliRunner()
    table = runner.invoke(cli, ["compare", older, "--db", str(db)])  # the candidate defaults to the latest run
    assert table.exit_code == 0, table.output
    runs = f"Candidate run {newer} against baseline run {older}. Not compared: 0 cells only the baseline has, 2 only"
    assert table.output.startswith(runs), table.output
    assert "6 shared cells; 0 at least 5% slower or larger, or failing now; 2 exponents compared, 0 changed" in table.output
    assert "Cells, worst first" in table.output and "Exponents, the largest changes first" in table.output
    assert "83,886,080" in table.output  # whole bytes, grouped: softmax at 2k (accounted, bf16, 2 heads)
    markdown = runner.invoke(cli, ["compare", older, newer, "--db", str(db), "--format", "markdown"])
    assert markdown.exit_code == 0 and "| config | seq_len | status_a |" in markdown.output
    assert "83,886,080" in markdown.output and "nan" not in markdown.output  # as the table reads (it printed nan, raw floats)
    itself = runner.invoke(cli, ["compare", newer, newer, "--db", str(db)])
    assert itself.output.startswith(f"Run {newer} against itself: the two are the same run.")
    data = json.loads(runner.invoke(cli, ["compare", older, newer, "--db", str(db), "--format", "json"]).output)
    assert len(data["cells"]) == 6 and {row["metric"] for row in data["exponents"]} == {"peak_bytes"}
    other = attnprof.run_sweep(attnprof.Sweep(impls="softmax", lengths=(1024,), causal="no", heads=4, accounting=True), db)
    apart = runner.invoke(cli, ["compare", older, other, "--db", str(db)])  # 4 heads: no cell in common
    assert apart.exit_code == 0 and "The two runs share no cell (configuration, length and seed)" in apart.output
    # an unfinished candidate says so, with the command that measures the rest (it read as a whole comparison)
    store = Store.open(db, create=False)
    store.set_run_state(other, "interrupted")
    store.close()
    stopped = runner.invoke(cli, ["compare", older, other, "--db", str(db), "--format", "json"])
    said = f"The candidate is interrupted: 1 of 1 cases, the rest with attnprof sweep --resume {other} --db {db}."
    assert said in json.loads(stopped.output)["note"]
    assert "Not compared: 6 cells only the baseline has, 1 only the candidate." in stopped.output
    # and its baseline file says it holds part of the run (a rule calls the missing cells new and judges none of them)
    exported = runner.invoke(cli, ["export", other, "--format", "baseline", "--out", str(db.parent / "b.jsonl"), "--db", str(db)])
    assert exported.exit_code == 0 and f"run {other} is interrupted: 1 of 1 cases" in exported.output, exported.output
    assert "a rule judges the cells it lacks as new, not against it" in exported.output
    bad = runner.invoke(cli, ["compare", "nosuchrun", "--db", str(db)])
    assert bad.exit_code == 2 and "'nosuchrun'" in bad.output and "Traceback" not in bad.output


def test_exponents_are_compared_over_the_cells_both_runs_ran(two_runs):
    """A cell that failed in one run is no shared length: SDPA timed out at 8k in one run, and its exponents were fitted
    over 256..4k against 256..8k."""
    from attnprof.dashboard.compare import shared_configurations

    db, older, newer = two_runs
    a, b = attnprof.load_measurements(older, db), attnprof.load_measurements(newer, db)
    failed = b.assign(status=b["status"].where(b["seq_len"] != 4096, "timeout"))
    kept_a, kept_b = shared_configurations(a, failed)
    assert sorted(set(kept_a["seq_len"])) == sorted(set(kept_b["seq_len"])) == [1024, 2048]


def test_compare_keeps_the_exponents_unrounded_as_fit_does(two_runs):
    """compare rounded its exponents to 4 decimals, then showed 4 significant figures: 1.9175378 read 1.917 there and
    1.918 in `fit` (a consistency audit). Over the same lengths both give the same number."""
    from attnprof.analysis import analyse

    db, _, newer = two_runs
    _, exponents = attnprof.compare_runs(newer, newer, db)
    fits = analyse(attnprof.load_measurements(newer, db), ("peak_bytes",)).fits.set_index("label")
    compared = exponents[exponents["metric"] == "peak_bytes"].set_index("config")
    for label in ("softmax", "cosformer"):
        assert compared.loc[label, "exponent_a"] == compared.loc[label, "exponent_b"] == fits.loc[label, "exponent"]


def test_cells_and_exponents_are_listed_worst_first_in_one_order_everywhere():
    """Improved cells were ordered by their unchanged memory (0.646, 0.926, 0.425, 0.0337), unchanged ones split around
    them, and `--all` and JSON listed exponents by the signed change, a drop of 2.389 last, where the default table put
    it first (a user audit)."""
    import math

    import pandas as pd

    from attnprof.analysis import CONFIG
    from attnprof.dashboard.compare import _score, exponent_changes

    nan = math.nan
    rows = {"faster .646": ("ok", "ok", 0.646, 1.0), "faster .926": ("ok", "ok", 0.926, 1.0), "faster .425": ("ok", "ok", 0.425, 1.0),
            "faster .0337": ("ok", "ok", 0.0337, 1.0), "same 1.015": ("ok", "ok", 1.015, 0.99), "same .99": ("ok", "ok", 0.99, 1.0),
            "slower 1.3": ("ok", "ok", 1.3, 0.5), "fixed": ("oom", "ok", nan, nan), "failing": ("ok", "oom", nan, nan)}  # fmt: skip
    ranked = sorted(rows, key=lambda name: _score(*rows[name]), reverse=True)
    assert ranked == [
        "failing",
        "slower 1.3",
        "same 1.015",
        "same .99",
        "faster .926",
        "faster .646",
        "faster .425",
        "faster .0337",
        "fixed",
    ]

    config = dict(impl="x", label="x", batch=1, heads=2, head_dim=64, dtype="float32", device="cpu", causal=False, mode="fwd")
    assert set(config) == {"impl", *CONFIG}

    def fits(exponents):
        return pd.DataFrame([{**config, "label": label, "impl": label, "metric": "time", "exponent": e, "exponent_low": e - w,
                              "exponent_high": e + w, "complexity": "linear", "lengths_used": (1024, 4096), "fit": object()}
                             for label, (e, w) in exponents.items()])  # fmt: skip

    before = fits({"up": (1.0, 0.01), "down": (3.0, 0.01), "small": (1.0, 0.01), "unsure": (1.0, 1.0)})
    after = fits({"up": (1.5, 0.01), "down": (0.611, 0.01), "small": (1.1, 0.01), "unsure": (3.0, 1.0)})
    changes = exponent_changes(pd.concat([before, after]), before, after)
    assert list(changes["config"]) == ["down", "up", "small", "unsure"], changes[["config", "delta", "significant"]]


def test_the_compare_table_names_option_lines_in_full(tmp_path):
    """rich read a label's "[num_landmarks=32]" as markup and printed the line as plain `nystromformer`, beside the
    default line of the same name: which option set regressed could not be told (a plugin author's audit)."""
    db = tmp_path / "options.db"
    sweep = attnprof.Sweep(impls="nystromformer,nystromformer:num_landmarks=32", lengths=(256,), causal="no", heads=2, accounting=True)
    older, newer = attnprof.run_sweep(sweep, db), attnprof.run_sweep(sweep, db)
    table = CliRunner().invoke(cli, ["compare", older, newer, "--db", str(db)])
    assert table.exit_code == 0, table.output
    assert "nystromformer[num_landmarks=32]" in table.output, table.output
