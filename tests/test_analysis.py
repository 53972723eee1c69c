"""`attnprof fit` and the analysis API over a real (accounting) run in a real database."""

import json
import re
from pathlib import Path

import pytest
from click.testing import CliRunner

from attnprof.analysis import CONFIG, analyse
from attnprof.api import load_measurements, run_sweep
from attnprof.cli import cli
from attnprof.crossover_groups import merged_crossovers
from attnprof.errors import UsageError
from attnprof.spec import Sweep, parse_impls
from attnprof.store import Store

TESTS = Path(__file__).resolve().parent  # on PYTHONPATH (conftest): plugin commands name it (fake_impls' folder)


@pytest.fixture(scope="module")
def accounted(tmp_path_factory):
    db = tmp_path_factory.mktemp("fit") / "fit.db"
    sweep = Sweep(
        impls=parse_impls("softmax,sdpa-flash"), lengths=tuple(1024 << i for i in range(6)), heads=(4,), causal=(False,), accounting=True
    )
    run_sweep(sweep, db)
    return db


def test_exponents_classes_crossovers_and_frontiers(accounted):
    result = analyse(load_measurements("latest", accounted), budget_bytes=80 * 2**30)
    fits = result.fits.set_index(["label", "metric"])
    assert fits.loc[("softmax", "peak_bytes"), "exponent"] == pytest.approx(2.0, abs=0.01)
    assert fits.loc[("softmax", "peak_bytes"), "complexity"] == "quadratic"
    assert fits.loc[("sdpa-flash", "peak_bytes"), "complexity"] == "linear"
    assert fits.loc[("sdpa-flash", "flops"), "exponent"] == pytest.approx(2.0, abs=1e-6)
    memory = result.crossovers[result.crossovers["metric"] == "peak_bytes"].iloc[0]
    assert memory["kind"] in ("extrapolated", "in range") and memory["cheaper_above"] == "sdpa-flash"
    frontier = result.frontiers.set_index("label")
    # softmax's fp32 N x N scores and probabilities for 4 heads: 4 * N^2 * (4 + 4 + 2) bytes ~ 80 GiB at N ~ 46k
    assert 30_000 < frontier.loc["softmax", "length"] < 60_000
    # sdpa-flash's own peak is small: q, k, v (3 * 4 heads * 64 * 2 bytes a token) bound it, at 80 GiB / 1536 B
    assert frontier.loc["sdpa-flash", "length"] < 80 * 2**30 / 1536 and "with its inputs" in frontier.loc["sdpa-flash", "message"]


def test_fit_command_formats(accounted):
    runner = CliRunner()
    table = runner.invoke(cli, ["fit", "latest", "--db", str(accounted), "--budget", "80GiB", "--metric", "peak_bytes"])
    assert table.exit_code == 0, table.output
    assert "quadratic" in table.output and "linear" in table.output and "Memory frontiers (budget 80.0 GiB, from --budget):" in table.output
    # an extrapolated frontier missed the accounted one by 30% (Combiner-Fixed) and more (-Logsparse): how to pin it is said
    assert "softmax (bidir fwd): extrapolated" in table.output and "An extrapolated frontier is the fit's estimate" in table.output
    # the rule, a sentence, is listed under the table: as a column it squeezed the others to a word a line
    # A fit that kept every length for want of anything to drop is counted, not listed: on a run of every impl in
    # four configurations that was half the lines. Those that drop lengths are listed in test_far_crossings_...
    assert "Fitted lengths:\n  all 2 fits keep every length they have: no fixed overhead over its share" in table.output
    assert "┃ rule" not in table.output
    markdown = runner.invoke(cli, ["fit", "--db", str(accounted), "--format", "markdown", "--metric", "flops"])
    assert "| config | metric | exponent | class | r2 | lengths | rule |" in markdown.output
    output = runner.invoke(cli, ["fit", "--db", str(accounted), "--format", "json"]).output

    def refuse(constant):
        raise ValueError(f"not JSON: {constant}")

    payload = json.loads(output, parse_constant=refuse)  # strict: no NaN or Infinity (they are null)
    assert {f["metric"] for f in payload["fits"]} == {"peak_bytes", "flops"}  # accounting runs have no times
    assert any(value is None for row in payload["crossovers"] + payload["fits"] for value in row.values())
    bad = runner.invoke(cli, ["fit", "--db", str(accounted), "--metric", "speed"])
    assert bad.exit_code == 2 and "'speed'" in bad.output
    # asked for times an accounting run does not have: it printed an empty table and exit 0
    untimed = runner.invoke(cli, ["fit", "--db", str(accounted), "--metric", "time"])
    assert untimed.exit_code == 2 and "no time values" in untimed.output and "accounting run times nothing" in untimed.output
    some = runner.invoke(cli, ["fit", "--db", str(accounted), "--metric", "time,flops"])
    assert some.exit_code == 0 and "no time values" in some.output and "fitting flops" in some.output and "sdpa-flash" in some.output
    bad = runner.invoke(cli, ["fit", "--db", str(accounted), "--budget", "lots"])
    assert bad.exit_code == 2 and "'lots'" in bad.output
    only = runner.invoke(cli, ["fit", "--db", str(accounted), "--impl", "softmax", "--metric", "flops"])
    assert only.exit_code == 0, only.output
    assert "softmax" in only.output and "sdpa-flash" not in only.output and "(0 of 0 pairs cross)" in only.output
    bad = runner.invoke(cli, ["fit", "--db", str(accounted), "--impl", "nope"])
    assert bad.exit_code == 2 and "'nope'" in bad.output and "Traceback" not in bad.output
    for empty in ("--metric=", "--impl="):  # a CI variable left unset: it fitted everything, exit 0
        bad = runner.invoke(cli, ["fit", "--db", str(accounted), empty])
        assert bad.exit_code == 2 and "''" in bad.output and len(bad.output.splitlines()) == 1, bad.output
    bad = runner.invoke(cli, ["fit", "--db", str(accounted), "--budget", "0"])
    assert bad.exit_code == 2 and "'0'" in bad.output and "Traceback" not in bad.output


def test_far_crossings_are_left_out_unless_asked_for(tmp_path):
    """Combiner-Fixed's and -Logsparse's peaks never cross in 1k..32k; their fitted lines do, at N ~ 190k with an
    interval reaching 1.5M, beyond 16x the measured lengths. The default output counts that pair; --all-crossovers lists it."""
    db = tmp_path / "linear.db"
    lengths = tuple(1024 << i for i in range(6))
    sweep = Sweep(impls=parse_impls("combiner-fixed,combiner-logsparse"), lengths=lengths, heads=(4,), causal=(False,), accounting=True)
    run_sweep(sweep, db)
    runner = CliRunner()
    default = runner.invoke(cli, ["fit", "--db", str(db), "--metric", "peak_bytes"])
    assert default.exit_code == 0, default.output
    assert "(1 of 1 pairs cross; 1 whose 95% interval reaches beyond 16x the measured lengths are left out" in default.output
    assert "combiner-fixed vs combiner-logsparse" not in default.output
    # the rule of a fit that dropped lengths is listed under the table (a column squeezed the others to a word a line)
    assert "Fitted lengths:\n  combiner-fixed bidir fwd bfloat16 meta B1 H4 D64 peak_bytes: dropped 1k..2k" in default.output
    assert "\n  the other 1 fits keep every length they have" in default.output and "┃ rule" not in default.output
    every = runner.invoke(cli, ["fit", "--db", str(db), "--metric", "peak_bytes", "--all-crossovers"])
    assert "(1 of 1 pairs cross):" in every.output and "peak_bytes combiner-fixed vs combiner-logsparse" in every.output
    payload = json.loads(runner.invoke(cli, ["fit", "--db", str(db), "--metric", "peak_bytes", "--format", "json"]).output)
    (pair,) = payload["crossovers"]  # JSON keeps every pair, and says which are near
    assert pair["near"] is False and pair["kind"] == "extrapolated" and pair["length_high"] > 16 * lengths[-1]


def test_markdown_lists_crossovers_apart_from_the_table_and_equal_costs_read_as_equal(accounted):
    runner = CliRunner()
    markdown = runner.invoke(cli, ["fit", "--db", str(accounted), "--format", "markdown", "--budget", "80GiB"]).output
    table_end = markdown.index("Crossovers (")
    assert markdown[:table_end].endswith("|\n\n")  # a blank line ends the table; else the next lines join it as rows
    after = markdown[table_end:].splitlines()
    note = [i for i, line in enumerate(after) if line.startswith("An extrapolated frontier is the fit's estimate")]
    assert note and after[note[0] - 1] == ""  # a paragraph of its own, not the last list item's continuation
    listed = [line for line in after[2:] if line and not line.endswith(":") and not line.startswith("An extrapolated")]
    assert after[1] == "" and all(line.startswith("- ") for line in listed)
    payload = json.loads(runner.invoke(cli, ["fit", "--db", str(accounted), "--format", "json", "--metric", "flops"]).output)
    (pair,) = payload["crossovers"]  # softmax and sdpa-flash: the same 4 N^2 d H FLOPs
    assert pair["kind"] == "none" and "cost the same at every length" in pair["message"]


def test_fit_takes_a_label_with_options_as_one_line(tmp_path):
    db = tmp_path / "labels.db"
    sweep = Sweep(
        impls=parse_impls("combiner-fixed:block_size=32,combiner-fixed"),
        lengths=(1024, 2048, 4096),
        heads=(2,),
        causal=(False,),
        accounting=True,
    )
    run_sweep(sweep, db)
    one = CliRunner().invoke(cli, ["fit", "--db", str(db), "--impl", "combiner-fixed[block_size=32]", "--metric", "flops"])
    assert one.exit_code == 0, one.output
    assert "\n  combiner-fixed[block_size=32] bidir fwd" in one.output and "\n  combiner-fixed bidir fwd" not in one.output
    both = CliRunner().invoke(cli, ["fit", "--db", str(db), "--impl", "combiner-fixed", "--metric", "flops"])
    assert "\n  combiner-fixed[block_size=32] bidir fwd" in both.output and "\n  combiner-fixed bidir fwd" in both.output
    as_flag = CliRunner().invoke(cli, ["fit", "--db", str(db), "--impl", "combiner-fixed:block_size=32", "--metric", "flops"])
    assert as_flag.exit_code == 0 and as_flag.output == one.output, as_flag.output  # as --impl takes it, too
    # an option at its default is no option: the label names the default line (it was "not in this run")
    default = CliRunner().invoke(cli, ["fit", "--db", str(db), "--impl", "combiner-fixed[backend=eager]", "--metric", "flops"])
    assert default.exit_code == 0 and "\n  combiner-fixed bidir fwd" in default.output, default.output
    # an accounting run has no device memory: its frontiers said nothing at all, then "none without a budget" where the
    # report drew them at 80 GiB; now at that default, said to be one
    peaks = CliRunner().invoke(cli, ["fit", "--db", str(db), "--metric", "peak_bytes"])
    assert "Memory frontiers (budget 80.0 GiB, a default: the run has no device memory (an accounting run" in peaks.output


def test_impls_with_identical_curves_are_listed_once_in_the_crossovers(tmp_path):
    """Exact attentions share their FLOPs: cosFormer's crossing with each of them was a line of its own, the same
    answer three times here (five in a run of every impl). The listing names the set once; the frame keeps each pair."""
    db = tmp_path / "equal.db"
    lengths = tuple(1024 << i for i in range(4))
    impls = parse_impls("cosformer,sdpa-flash,sdpa-math,softmax")
    sweep = Sweep(impls=impls, lengths=lengths, heads=(2,), causal=(False,), accounting=True)
    run_sweep(sweep, db)
    result = analyse(load_measurements("latest", db), metrics=("flops",))
    with_cosformer = result.crossovers[result.crossovers["impl_a"] == "cosformer"]
    assert len(with_cosformer) == 3 and with_cosformer["length"].nunique() == 1  # one answer, three rows
    merged = merged_crossovers(result.crossovers, result.fits, CONFIG[1:])
    (row,) = merged.itertuples()  # the exact three never cross each other: their pairs are dropped too
    assert row.impl_a == "cosformer" and row.impl_b == "sdpa-flash = sdpa-math = softmax"
    assert row.length == with_cosformer["length"].iloc[0] and row.cheaper_below == "sdpa-flash = sdpa-math = softmax"
    assert "cosformer is cheaper above N = " in row.message and "sdpa-flash = sdpa-math = softmax below" in row.message
    listing = CliRunner().invoke(cli, ["fit", "--db", str(db), "--metric", "flops"]).output
    assert "(3 of 6 pairs cross; impls with identical curves are named once, as a = b: 1 line)" in listing
    assert listing.count(" vs ") == 1 and "flops cosformer vs sdpa-flash = sdpa-math = softmax (bidir fwd): extrapolated" in listing
    table_rows = [line for line in listing.splitlines() if line.startswith("│ ")]
    assert len(table_rows) == 2 and "│ sdpa-flash = sdpa-math = softmax bidir fwd" in table_rows[1]  # their one fit: one row
    every = json.loads(CliRunner().invoke(cli, ["fit", "--db", str(db), "--metric", "flops", "--format", "json"]).output)
    assert len(every["crossovers"]) == 6  # JSON keeps every pair


def test_analyse_takes_a_budget_as_fit_does_and_names_a_wrong_argument(accounted):
    """analyse("latest") was a TypeError from pandas, and budget_bytes="8GiB" one from a comparison deep inside."""
    frame = load_measurements("latest", accounted)
    result = analyse(frame, "peak_bytes", "8GiB")
    assert set(result.fits["metric"]) == {"peak_bytes"} and set(result.frontiers["budget_bytes"]) == {8 * 2**30}
    for args, fragment in (
        (("latest",), "analyse takes the DataFrame of load_measurements(run, db), not str 'latest'"),
        ((frame, ("speed",)), "unknown metric 'speed'"),
        ((frame, ("peak_bytes",), "lots"), "bad budget_bytes 'lots'"),
    ):
        with pytest.raises(UsageError, match=re.escape(fragment)):
            analyse(*args)


def test_analyse_answers_with_the_same_columns_when_nothing_fits_and_refuses_pooled_runs(accounted):
    """A notebook audit: with no usable fit, crossovers and frontiers had no columns and fits 12 of its 32, so
    `frontiers.query("kind == ...")` raised KeyError; and two runs concatenated were fitted as one (twice the points)."""
    import pandas as pd

    frame = load_measurements("latest", accounted)
    full = analyse(frame, budget_bytes="80GiB")
    empty = analyse(frame[frame["status"] == "none"], budget_bytes="80GiB")
    for part in ("fits", "crossovers", "frontiers"):
        assert list(getattr(empty, part).columns) == list(getattr(full, part).columns) and len(getattr(empty, part)) == 0, part
    assert empty.frontiers.query("kind == 'in range'").empty
    twice = pd.concat([frame, frame.assign(run_id="20990101-000000-abcd")], ignore_index=True)
    with pytest.raises(UsageError, match=r"runs \S+ and 20990101-000000-abcd both measure \S+ N=\d+ \(and maybe more\): analyse them one"):
        analyse(twice)
    other = frame[frame["label"] == "softmax"].assign(run_id="20990101-000000-abcd")  # runs of different cells: one set
    assert len(analyse(pd.concat([frame[frame["label"] != "softmax"], other], ignore_index=True)).fits) == len(full.fits)


def test_fit_says_which_timed_cells_it_should_not_be_trusted_on(tmp_path):
    """A run timed while another process kept one of two cores busy fitted Nystromformer's time exponent as 0.010
    and put a crossover at 3465 instead of 336; `fit` printed none of the notes its rows carried."""
    from attnprof.analysis import timing_caveats
    from attnprof.api import run_sweep
    from attnprof.store import Store

    db = tmp_path / "t.db"
    run_sweep(Sweep(impls=parse_impls("softmax,sdpa"), lengths=(64, 128, 256), heads=(2,), head_dim=(16,), causal=(False,),
                    device=("cpu",), dtype=("float32",), warmup_ms=1.0, rep_ms=5.0), db)  # fmt: skip
    frame = load_measurements("latest", db)
    frame = frame[frame["label"] == "softmax"]
    quiet = frame.assign(reason="", noisy=False)
    assert timing_caveats(quiet) == ""
    busy = quiet.assign(reason="timed while other processes kept 1.0 of 2 cores busy: times may be inflated")
    said = timing_caveats(busy.assign(noisy=[True, False, False]))
    assert said.startswith("Of 3 timed cells, 3 were timed while other processes kept cores busy") and "1 is noisy" in said
    assert "softmax" in said and "`attnprof show` marks them" in said
    # the CLI prints it below the fits, and the JSON carries it: the stored rows made busy by hand
    store = Store.open(db, create=False)
    store.connection.execute("UPDATE measurements SET reason = ?", ("timed while other processes kept 1.0 of 2 cores busy: x",))
    store.connection.commit()
    store.set_run_state(store.resolve_run("latest").run_id, "complete")  # the run's snapshot, which the report reads, again
    store.close()
    table = CliRunner().invoke(cli, ["fit", "--db", str(db), "--metric", "time", "--impl", "softmax"])
    assert table.exit_code == 0 and "Of 3 timed cells, 3 were timed while other processes kept cores busy" in table.output
    # each crossover says which of its cells were busy or noisy (one sentence about every cell named none of them)
    crossings = analyse(load_measurements("latest", db), ("time",)).crossovers
    assert list(crossings["caveat"]) == ["timed on a busy machine or noisy: sdpa N=64, 128, 256; softmax N=64, 128, 256"]
    # the report says it too, above its exponents, crossovers and frontiers (only each cell's hover did)
    from attnprof.report import write_report

    page, _ = write_report("latest", db=db, out=tmp_path / "report.html")
    assert "Of 6 timed cells, 6 were timed while other processes kept cores busy" in page.read_text()
    payload = json.loads(CliRunner().invoke(cli, ["fit", "--db", str(db), "--format", "json"]).output)
    assert payload["timing_caveats"].startswith("Of 6 timed cells")
    assert "timing_caveats" in payload and analyse(frame, ("peak_bytes",)).timing_caveats == ""  # no time fitted: nothing said
    # a baseline exported from such a run says so: one timed under load read 649 ms for a 7 ms cell, and hid a 3x slowdown
    out = tmp_path / "baseline.jsonl"
    exported = CliRunner().invoke(cli, ["export", "latest", "--format", "baseline", "--out", str(out), "--db", str(db)])
    assert exported.exit_code == 0 and out.exists() and "note: Of 6 timed cells, 6 were timed while" in exported.stderr
    assert "export a run timed on a quiet one" in exported.stderr


def test_an_exact_impl_with_its_own_reference_keeps_its_distance_from_softmax():
    """fidelity_error is the error against exact softmax: an exact impl checked against its own reference (scaled
    logits) stored its check error there, 2.5e-7 where it is half its size off softmax."""
    from attnprof import impls
    from attnprof.checks import run_check
    from attnprof.spec import Case, ImplSpec

    case = Case(impl="scaled", seq_len=128, heads=2, head_dim=16, options=ImplSpec("scaled", (("scale", "2.0"),)).options)
    result = run_check(impls.get("scaled"), case)
    assert result.failure is None and result.check_error < 1e-5 and result.fidelity_error > 0.05
    plain = run_check(impls.get("softmax"), Case(impl="softmax", seq_len=128, heads=2, head_dim=16))
    assert plain.fidelity_error == plain.check_error < 1e-5


def test_fit_names_its_run_its_state_and_the_lengths_it_left_out(tmp_path):
    """`fit` never named the run it fitted (after a resume, `latest` is another run), said nothing of an interrupted
    run, and "fault: all 2 lengths kept" hid that 4k errored (a consistency audit)."""
    from attnprof.store import Store

    db = tmp_path / "fit.db"
    sweep = Sweep(impls=parse_impls("softmax,fault:kind=raise,at_length=4096"), lengths=(1024, 2048, 4096), heads=(2,),
                  causal=(False,), accounting=True, name="nightly")  # fmt: skip
    run_id = run_sweep(sweep, db)
    runner = CliRunner()
    table = runner.invoke(cli, ["fit", "--db", str(db), "--metric", "peak_bytes"])
    assert table.exit_code == 0 and table.output.startswith(f"Run {run_id} (nightly).\n"), table.output
    said = "Lengths not fitted (no measurement there):\n  fault[at_length=4096,kind=raise] B1 H2 D64 bfloat16 meta bidir fwd: N=4096 error"
    assert said in table.output, table.output
    assert "softmax B1" not in table.output.split("Lengths not fitted")[1].split("Crossovers")[0]  # softmax measured all
    payload = json.loads(runner.invoke(cli, ["fit", "--db", str(db), "--format", "json"]).output)
    assert payload["run"] == run_id and payload["state"] == "complete"
    left_out = [(row["label"], row["seq_len"], row["status"]) for row in payload["not_fitted"]]
    assert left_out == [("fault[at_length=4096,kind=raise]", 4096, "error")]
    store = Store.open(db, create=False)
    store.set_run_state(run_id, "interrupted")
    store.close()
    stopped = runner.invoke(cli, ["fit", "--db", str(db), "--format", "markdown", "--metric", "peak_bytes"])
    said = f"Run {run_id} (nightly): interrupted: 6 of 6 cases, the rest with "
    said += f"PYTHONPATH={TESTS} ATTNPROF_PLUGINS=fake_impls attnprof sweep --resume {run_id}"
    assert stopped.output.startswith(said), stopped.output


def test_a_cpu_runs_frontiers_say_their_budget_is_the_hosts_ram(db):
    """A CPU frontier's budget is the host's whole RAM, where the sweep refuses a case predicted past 80% of the RAM
    available as it runs: the frontiers' heading says both, or the two read as disagreeing."""
    from attnprof.table import format_bytes

    run_sweep(Sweep(impls=parse_impls("softmax"), lengths=(64, 128, 256), heads=(2,), head_dim=(16,), device=("cpu",), causal=(False,),
                    rep_ms=5.0, warmup_ms=1.0), db)  # fmt: skip
    host = Store.open(db, create=False).resolve_run("latest").env["host_memory_bytes"]
    shown = CliRunner().invoke(cli, ["fit", "latest", "--db", str(db), "--metric", "peak_bytes"])
    assert shown.exit_code == 0, shown.output
    assert f"Memory frontiers (budget {format_bytes(host)}, the host's RAM; the sweep refuses a CPU case predicted past 80%" in shown.output


def test_a_csv_export_read_back_is_analysed_as_the_run_is(tmp_path):
    """pd.read_csv of `export --format csv` holds the samples as JSON text: the time fit died casting '[74.77, ...]' to
    float inside pandas."""
    import pandas as pd

    db, out = tmp_path / "t.db", tmp_path / "e.csv"
    sweep = Sweep(impls=parse_impls("softmax,cosformer"), lengths=(64, 128, 256), heads=(1,), head_dim=(16,), device=("cpu",),
                  dtype=("float32",), causal=(False,), warmup_ms=1.0, rep_ms=5.0)  # fmt: skip
    run_sweep(sweep, db)
    assert CliRunner().invoke(cli, ["export", "--db", str(db), "--format", "csv", "--out", str(out)]).exit_code == 0
    read_back, stored = analyse(pd.read_csv(out)), analyse(load_measurements("latest", db))
    columns = ["label", "metric", "exponent", "exponent_low", "exponent_high", "n_samples"]
    assert "time" in set(stored.fits["metric"])
    pd.testing.assert_frame_equal(read_back.fits[columns], stored.fits[columns])
    assert read_back.crossovers["message"].tolist() == stored.crossovers["message"].tolist()
    assert read_back.timing_caveats == stored.timing_caveats


def test_the_analysis_refuses_budgets_that_are_not_byte_counts(accounted):
    frame = load_measurements("latest", accounted)
    for name, value in (("budget_bytes", [1]), ("device_bytes", "80GiB"), ("device_bytes", -5), ("budget_bytes", True)):
        with pytest.raises(UsageError, match=re.escape(f"bad {name} {value!r}: must be a finite number of bytes above 0")):
            analyse(frame, **{name: value})
    assert set(analyse(frame, metrics=None).fits["metric"]) == {"peak_bytes", "flops"}  # None: every metric (no times here)
