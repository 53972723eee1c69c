"""Pure view helpers and the fast read path: filters, line names, the reproduce command, Store.frame + run_frame."""

from pathlib import Path

import numpy as np
import pandas as pd
import seeding

from attnprof.dashboard import runinfo, views
from attnprof.dashboard.data import DataSource, run_frame
from attnprof.export import measurements_frame
from attnprof.store import Store


def test_filter_defaults_keep_every_impl_and_length_but_one_shape(base_frame):
    wide = pd.concat([base_frame, base_frame.assign(heads=8)])
    defaults = views.default_filters(wide)
    assert defaults["heads"] == [4] and defaults["label"] == ["nystromformer[num_landmarks=32]", "sdpa", "softmax"]
    assert defaults["causal"] == [False, True] and defaults["seq_len"] == list(seeding.LENGTHS)
    assert len(views.apply_filters(wide, defaults)) == len(base_frame)
    assert len(views.apply_filters(wide, {"heads": []})) == len(wide)  # nothing ticked: not filtered


def test_line_names_carry_only_the_axes_that_vary_and_are_not_facets(base_frame):
    lines = views.with_lines(base_frame, facets=())
    assert set(lines["line"]) == {"softmax bidir", "softmax causal", "sdpa bidir", "sdpa causal", "nystromformer[num_landmarks=32] bidir",
                                  "nystromformer[num_landmarks=32] causal"}  # fmt: skip
    faceted = views.with_lines(base_frame, facets=("causal",))
    assert set(faceted["line"]) == {"softmax", "sdpa", "nystromformer[num_landmarks=32]"} and set(faceted["facet_col"]) == {
        "bidir",
        "causal",
    }
    assert views.default_facets(base_frame) == ["causal"]


def test_rebuilt_command_parses_back_to_the_same_sweep():
    from attnprof.scenario import sweep_from_options

    sweep = seeding.sweep_dict()
    command = runinfo.rebuilt_command(sweep)
    assert command.startswith("attnprof sweep --impl softmax,sdpa,nystromformer:num_landmarks=32 --lengths 256,512,1k,2k,4k,8k")
    tokens = command.split()[2:]
    options = {tokens[i][2:].replace("-", "_"): tokens[i + 1] for i in range(0, len(tokens), 2)}
    rebuilt = sweep_from_options(options)
    assert list(rebuilt.lengths) == sweep["lengths"] and rebuilt.causal == (False, True) and rebuilt.heads == (seeding.HEADS,)
    assert [s.label for s in rebuilt.impls] == sweep["impls"]
    # a run's resolved definition pins its devices and dtypes, which the command as typed left to the machine's defaults
    typed = seeding.run_info("r", "t", command="attnprof sweep --impl softmax")
    # the database as a path that holds wherever the command is run (a relative one was the reporter's folder's: a report audit)
    assert runinfo.reproduce_command(typed, "my runs.db") == f"{command} --db '{Path('my runs.db').absolute()}'"
    assert "--device cpu" in command and "--dtype float32" in command
    older = seeding.run_info("r", "t", sweep={"impls": ["x"]}, command="attnprof sweep --impl x")  # no resolved device: as typed
    assert runinfo.reproduce_command(older, "my runs.db") == "attnprof sweep --impl x"


def test_store_frame_and_run_frame_match_the_export_frame(two_runs_db):
    store = Store.open(two_runs_db, create=False)
    try:
        fast = run_frame(seeding.BASE, store.frame(seeding.BASE), store.sample_counts(seeding.BASE))
        slow = measurements_frame(seeding.BASE, store.measurements(seeding.BASE))
        assert store.frame("no-such-run").empty
    finally:
        store.close()
    assert list(fast.columns) == [*(c for c in slow.columns if c != "times_ms"), "samples"]  # samples are read on demand
    assert list(fast["samples"]) == [len(times) for times in slow["times_ms"]]  # how many: a spread of 3 says less (crossover)
    source = DataSource(two_runs_db)
    assert source.samples(seeding.BASE, fast) == list(slow["times_ms"])
    assert source.samples(seeding.BASE, fast.iloc[[2, 0]]) == [slow["times_ms"][2], slow["times_ms"][0]]
    for column in fast.columns.drop("samples"):
        if column in ("options", "noisy"):
            assert [v if v == v else None for v in fast[column]] == list(slow[column]), column
            continue
        left, right = fast[column], slow[column]
        if pd.api.types.is_numeric_dtype(left) and column not in ("causal",):
            assert np.allclose(left.astype(float), pd.to_numeric(right).astype(float), equal_nan=True, rtol=1e-12), column
        else:  # text: a missing value is None in the store's frame, NaN where pandas inferred a string dtype
            assert [None if v != v else v for v in left] == [None if v != v else v for v in right], column


def test_time_crossovers_in_the_dashboard_are_those_of_attnprof_fit():
    """The dashboard fits the cells' stored medians, `fit` the raw samples. Without the cells' spreads every median
    read as exact: where `fit` said two impls were level at 512 (2% apart, each spread 1%), the dashboard put the
    crossing between 256 and 512 (an audit's run: 436 against 449)."""
    from attnprof.analysis import CONFIG, analyse
    from attnprof.crossover import crossover_frame
    from attnprof.dashboard.data import numeric_frame

    lengths = (256, 512, 1024, 2048)
    cells = [seeding.cell("cosformer", n, time_ms=1e-3 * n, peak=n) for n in lengths]
    cells += [seeding.cell("softmax", n, time_ms=1.02e-3 * n * n / 512, peak=n) for n in lengths]  # 2% dearer at 512
    frame = numeric_frame(measurements_frame(seeding.BASE, cells))
    expected = analyse(frame, metrics=("time",)).crossovers.iloc[0]
    assert "at 512 the two are level" in expected["message"]
    shown = crossover_frame(views.fit_metric(frame, "time"), impl_col="label", config_cols=CONFIG[1:]).iloc[0]
    assert (shown["length"], shown["kind"], shown["message"]) == (expected["length"], expected["kind"], expected["message"])


def test_an_accounting_runs_reproduce_command_runs():
    """Rebuilt from the resolved sweep it said --warmup-ms 25 --rep-ms 100 --accounting, which the sweep refuses (exit 2:
    an accounting run times nothing), in the dashboard and in every shared report (a review's)."""
    from click.testing import CliRunner

    from attnprof.cli import cli

    sweep = dict(seeding.sweep_dict(), device=["meta"], dtype=["bfloat16"], accounting=True)
    command = runinfo.reproduce_command(seeding.run_info("r", "t", sweep=sweep))
    assert "--accounting" in command and "--rep-ms" not in command and "--warmup-ms" not in command
    result = CliRunner().invoke(cli, [*command.split()[1:], "--dry-run"])  # after "attnprof"
    assert result.exit_code == 0, result.output
