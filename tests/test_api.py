"""A Sweep built in Python is checked by the CLI's own parsers: one UsageError naming the bad value."""

import contextlib
import re
from pathlib import Path

import pytest

import attnprof
from attnprof.api import plan
from attnprof.errors import UsageError
from attnprof.spec import Sweep, parse_impls

TESTS = Path(__file__).resolve().parent  # on PYTHONPATH (conftest): plugin commands name it (fake_impls' folder)


@pytest.mark.parametrize(
    "changes, fragment",
    [
        (dict(lengths=(0,)), "bad length '0'"),
        (dict(name="latest"), "bad name 'latest'"),  # unreachable: `show latest` is the newest run
        (dict(lengths=(-5,)), "bad length '-5'"),
        (dict(lengths=(256.0,)), "bad length '256.0'"),
        (dict(batch=(0,)), "bad batch '0'"),
        (dict(heads=(True,)), "bad heads 'True'"),
        (dict(head_dim=(-1,)), "bad head_dim '-1'"),
        (dict(rep_ms=0.0), "bad rep_ms 0.0"),
        (dict(timeout=float("nan")), "bad timeout nan"),
        (dict(warmup_ms=-1.0), "bad warmup_ms -1.0"),
        (dict(seed=-1), "bad seed -1"),
        (dict(seed=2**63), f"bad seed {2**63}"),
    ],
)
def test_a_bad_value_in_a_python_sweep_is_one_usage_error_naming_it(changes, fragment):
    sweep = Sweep(**{"impls": parse_impls("softmax"), "lengths": (64,), "device": ("cpu",), **changes})
    with pytest.raises(UsageError, match=fragment):
        plan(sweep)


def test_the_largest_seed_sqlite_stores_is_accepted():
    cases = plan(Sweep(impls=parse_impls("softmax"), lengths=(64,), device=("cpu",), seed=2**63 - 1))
    assert {case.seed for case, _ in cases} == {2**63 - 1}


def test_what_the_readme_calls_from_python_is_there_after_a_plain_import():
    """In a fresh interpreter: `attnprof.analysis` was an AttributeError until something imported the submodule."""
    import subprocess
    import sys

    code = (
        "import attnprof\n"
        "assert attnprof.analysis.analyse is attnprof.analyse\n"
        "assert callable(attnprof.run_budget) and callable(attnprof.impls.register)\n"
        # what the CLI does, from a notebook without private modules (an audit found report, gate and compare only there)
        "from attnprof.errors import UsageError\n"
        "assert attnprof.UsageError is UsageError and issubclass(attnprof.SweepInterrupted, BaseException)\n"
        "assert all(callable(f) for f in (attnprof.write_report, attnprof.run_gate, attnprof.compare_runs, attnprof.plan))\n"
        "print('ok')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and done.stdout == "ok\n", done.stderr


def test_ctrl_c_stops_a_notebooks_loop_of_sweeps_that_catches_exceptions(tmp_path):
    """SweepInterrupted was an Exception: a loop of sweeps under `except Exception` caught it, and the interrupt
    stopped one sweep of the loop, not the loop (an API audit). It is a KeyboardInterrupt naming the run to resume."""
    code = (
        "import _thread, threading, attnprof\n"
        "threading.Timer(4.0, _thread.interrupt_main).start()\n"
        "try:\n"
        "    for heads in (1, 2):\n"
        "        try:\n"
        "            attnprof.run_sweep(attnprof.Sweep(impls='fault:kind=sleep', lengths=(64,), heads=(heads,), causal='no',\n"
        "                                              device='cpu', timeout=60), db='loop.db')\n"
        "        except Exception as error:\n"
        "            print('caught', type(error).__name__)\n"
        "except KeyboardInterrupt as stop:\n"
        "    print(type(stop).__name__, stop)\n"
    )
    done = _python(tmp_path, "-c", code)
    assert done.returncode == 0 and "caught" not in done.stdout, done.stdout + done.stderr[-2000:]
    run = attnprof.list_runs(db=tmp_path / "loop.db")["run_id"].tolist()
    said = f"SweepInterrupted interrupted after 0 of 1 cases of run {run[0]}: run_sweep(..., resume={run[0]!r}) measures the rest"
    assert done.stdout.strip() == said and len(run) == 1
    import sqlite3

    with contextlib.closing(sqlite3.connect(tmp_path / "loop.db")) as connection:  # stored so, not only read so (a review)
        assert connection.execute("SELECT state FROM runs").fetchall() == [("interrupted",)]


def test_a_resume_refuses_a_sweep_other_than_the_runs(tmp_path):
    """run_sweep(other, resume=run) measured the stored run's sweep and ignored `other` (new lengths, rep_ms) without a
    word, where the CLI refuses such flags (an API audit). None, Sweep() or the same sweep resume it."""
    db = tmp_path / "resume.db"
    sweep = Sweep(impls="softmax", lengths=(64, 128), causal="no", accounting=True)
    run = attnprof.run_sweep(sweep, db)
    other = Sweep(impls="softmax", lengths="2k", causal="no", accounting=True)
    for call in (attnprof.run_sweep, plan):
        with pytest.raises(UsageError, match=f"resume takes the sweep from run {run}; this sweep differs in lengths: pass sweep=None"):
            call(other, db, resume=run)
    for same in (None, Sweep(), sweep):
        assert attnprof.run_sweep(same, db, resume=run) == run and plan(same, db, resume=run) == []
    import numpy as np  # its default impls and numpy lengths: compared with Sweep(), "could not be broadcast" (a review)

    arrays = Sweep(lengths=np.array([64, 128]), heads=(2,), head_dim=(16,), causal="no", accounting=True)
    run = attnprof.run_sweep(arrays, db)
    assert attnprof.run_sweep(arrays, db, resume=run) == run


def test_progress_may_be_any_object_with_some_of_its_methods_and_a_bad_one_leaves_no_run(tmp_path):
    """progress=print, or an object with done() alone, failed with an AttributeError after the run was created, which
    then read as `latest` with no rows (an API audit)."""
    db = tmp_path / "progress.db"
    sweep = Sweep(impls="softmax", lengths=(64, 128), causal="no", accounting=True)
    for bad in (print, True):
        with pytest.raises(UsageError, match="bad progress .*: give an object with any of the methods named, begin, start, done"):
            attnprof.run_sweep(sweep, db, progress=bad)
    with pytest.raises(UsageError, match=re.escape("bad progress Progress: a class; give an instance of it (Progress())")):
        attnprof.run_sweep(sweep, db, progress=attnprof.Progress)
    assert not db.exists()

    class Counting:  # done() alone
        def __init__(self):
            self.seen = []

        def done(self, case, measurement):
            self.seen.append((case.seq_len, measurement.status.value))

    counting = Counting()
    attnprof.run_sweep(sweep, db, progress=counting)
    assert counting.seen == [(64, "ok"), (128, "ok")] and issubclass(attnprof.Progress, object)


def test_a_run_without_rows_gives_a_frame_of_the_grids_dtypes(tmp_path):
    """Its frame had seq_len, causal... as object: concatenated with another run's, np.log2(seq_len) failed (an audit)."""
    import numpy as np
    import pandas as pd

    from attnprof.api import _new_run, resolve_sweep
    from attnprof.store import Store

    db = tmp_path / "empty.db"
    full = attnprof.load_measurements(attnprof.run_sweep(Sweep(impls="softmax", lengths=(64,), causal="no", accounting=True), db), db)
    store = Store.open(db)
    store.add_run(_new_run(resolve_sweep(Sweep(impls="softmax", lengths=(64,), accounting=True)), ""))
    store.close()
    empty = attnprof.load_measurements("latest", db)
    grid = ["seq_len", "batch", "heads", "head_dim", "seed", "causal", "noisy", "median_ms", "peak_bytes"]
    assert empty.empty and dict(empty.dtypes[grid]) == dict(full.dtypes[grid])
    assert np.log2(pd.concat([empty, full])["seq_len"]).tolist() == [6.0]


def test_a_python_sweep_may_use_the_clis_spellings():
    """A string where a tuple belongs was read letter by letter (devices 'c', 'p', 'u'; causal 'y', 'e', 's'), and the
    CLI's "fwd-bwd" and "fp32" gave rows saying softmax did not support them, or a KeyError."""
    cases = plan(Sweep(impls="softmax", device="cpu", causal="yes", mode=("fwd-bwd",), lengths="256..512", dtype="fp32"))
    assert {(c.device, c.causal, c.mode, c.dtype, c.seq_len) for c, _ in cases} == {
        ("cpu", True, "fwd_bwd", "float32", 256),
        ("cpu", True, "fwd_bwd", "float32", 512),
    }
    for changes, fragment in (
        (dict(device="gpu"), "unknown device 'gpu'"),
        (dict(impls=3), "bad impls 3"),
        (dict(causal="maybe"), "bad causal"),
    ):
        with pytest.raises(UsageError, match=fragment):
            plan(Sweep(**{"lengths": (64,), **changes}))


def test_a_python_sweeps_numbers_given_as_text_are_used_as_numbers_and_flags_must_be_booleans(tmp_path):
    """rep_ms="5" was checked, then kept as text: every row an error comparing it with a float; timeout="30" raised a
    bare TypeError after creating the run; accounting="false", never checked, made an accounting run (an API audit)."""
    import numpy as np

    from attnprof.api import resolve_sweep

    sweep = Sweep(impls="softmax", lengths=range(64, 129, 64), causal="no", device="cpu", rep_ms="5", warmup_ms="1", timeout="30", seed="3")
    resolved = resolve_sweep(sweep)
    assert (resolved.lengths, resolved.rep_ms, resolved.warmup_ms, resolved.timeout, resolved.seed) == ((64, 128), 5.0, 1.0, 30.0, 3)
    assert resolve_sweep(Sweep(impls="softmax", lengths=np.array([256, 512]), device="cpu")).lengths == (256, 512)
    run = attnprof.run_sweep(sweep, tmp_path / "text.db")
    assert attnprof.load_measurements(run, tmp_path / "text.db")["status"].tolist() == ["ok", "ok"]
    for flag in ("false", "no", 1):
        with pytest.raises(UsageError, match=re.escape(f"bad accounting {flag!r}: expected true or false")):
            plan(Sweep(impls="softmax", lengths=(64,), accounting=flag))


def test_registering_refuses_what_the_cli_cannot_use_and_replaces_a_modules_own_impl():
    from dataclasses import replace

    from attnprof import impls
    from attnprof.impls.base import AttentionImpl
    from attnprof.impls.softmax import softmax_attention

    def mine(q, k, v, *, causal=False):
        return softmax_attention(q, k, v, causal=causal)

    base = AttentionImpl(name="audit-mine", family="test", fn=mine)
    for changes, fragment in (
        (dict(name="my:impl"), "impl name 'my:impl': use letters"),
        (dict(name="a,b"), "impl name 'a,b'"),
        (dict(name="all"), "impl name 'all'"),
        (dict(causal=True), "causal=True; give a tuple of False, True"),  # `attnprof list` then died on it
        (dict(modes=("fwd-bwd",)), "modes=('fwd-bwd',); give a tuple of 'fwd', 'fwd_bwd'"),  # every case unsupported
        (dict(devices=("gpu",)), "devices=('gpu',)"),
        (dict(options={"chunk size": 4}), "option name 'chunk size'"),
        # every row then read "TypeError: plain() got an unexpected keyword argument 'causal'"
        (dict(fn=lambda q, k, v: q), "fn <lambda>(q, k, v) cannot be called as fn(q, k, v, *, causal, **options)"),
        (dict(options={"scale": 1.0}), "with its options (scale): got an unexpected keyword argument 'scale'"),
        (dict(reference=lambda q, k: q), "reference <lambda>(q, k) cannot be called as reference(q, k, v, *, causal"),
        (
            dict(coupled_row_reference=lambda q, k, v, rows, *, causal: q),
            "coupled_row_reference <lambda>(q, k, v, rows, *, causal) cannot be called as coupled_row_reference(q, k, v, heads, rows, *",
        ),
        (dict(fn="softmax"), "fn is a str, not a function"),
    ):
        with pytest.raises(UsageError, match=re.escape(fragment)):
            impls.register(replace(base, **changes))
    with pytest.raises(UsageError, match="impl name 'softmax' is a built-in's"):  # it said "registered twice"
        impls.register(replace(base, name="softmax"))
    try:
        impls.register(base)

        def edited(q, k, v, *, causal=False):  # a notebook cell run again: a new function, the same module
            return softmax_attention(q, k, v, causal=causal)

        impls.register(replace(base, fn=edited))
        assert impls.get("audit-mine").fn is edited
    finally:
        impls._REGISTRY.pop("audit-mine", None)


def _python(tmp_path, *args, stdin: str | None = None):
    import os
    import subprocess
    import sys

    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path), *sys.path])}
    return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, input=stdin, capture_output=True, text=True, timeout=300)


MODULE = """
from attnprof.impls import register
from attnprof.impls.base import AttentionImpl
from attnprof.impls.softmax import softmax_attention

def mine(q, k, v, *, causal=False):
    return softmax_attention(q, k, v, causal=causal)

register(AttentionImpl(name="mine", family="test", fn=mine))
"""
SWEEP = (
    "import attnprof\n"
    "run = attnprof.run_sweep(attnprof.Sweep(impls='mine', lengths=(64,), causal='no', device='cpu', rep_ms=5), db='x.db')\n"
)


def test_an_impl_from_a_module_a_session_imported_reaches_the_workers(tmp_path):
    """A notebook's `import mykernels` registered its impls in the notebook only: each row read 'unknown impl'. The
    workers now import the modules of the impls registered in the sweep's process."""
    (tmp_path / "mykernels.py").write_text(MODULE)
    done = _python(tmp_path, "-c", "import mykernels\n" + SWEEP + "print(attnprof.load_measurements(run, 'x.db')['status'].tolist())")
    assert done.returncode == 0 and done.stdout.strip() == "['ok']", done.stderr[-2000:]


def test_an_impl_registered_in_an_interactive_session_is_refused_before_measuring(tmp_path):
    """Registered in `python -c` (or a notebook), an impl was accepted and every row then read 'unknown impl'."""
    done = _python(tmp_path, "-c", MODULE + SWEEP)
    assert done.returncode == 1 and "UsageError: impl 'mine' is registered in this interactive session" in done.stderr
    assert "register it in a module (mykernels.py) and import that here" in done.stderr and not (tmp_path / "x.db").exists()
    assert "attnprof.impls.unregister('mine') takes this one back" in done.stderr


def test_a_sessions_impl_may_be_taken_over_by_a_module_or_unregistered(tmp_path):
    """Following the refusal's advice, the same impl moved to a module and imported read "registered twice: by __main__
    and by mykernels", and nothing but a kernel restart took the cell's registration back (an API audit)."""
    (tmp_path / "mykernels.py").write_text(MODULE)
    taken_over = MODULE + "import mykernels\n" + SWEEP + "print(attnprof.load_measurements(run, 'x.db')['status'].tolist())"
    done = _python(tmp_path, "-c", taken_over)
    assert done.returncode == 0 and done.stdout.strip() == "['ok']", done.stderr[-2000:]
    taken_back = MODULE + (
        "from attnprof import impls\nimpls.unregister('mine')\nprint('mine' in impls.names())\n"
        "try:\n    impls.unregister('softmax')\nexcept attnprof.UsageError as error:\n    print(error)\n"
    )
    done = _python(tmp_path, "-c", "import attnprof\n" + taken_back)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.splitlines() == ["False", "impl 'softmax' is a built-in (attnprof.impls.softmax): it cannot be unregistered"]


def test_a_plugin_registering_a_function_it_did_not_define_reaches_the_workers(tmp_path):
    """`register(AttentionImpl(fn=functools.partial(softmax_attention)))` in myplug.py: the impl was taken for the
    built-in module's, the workers never imported myplug, and every row read "unknown impl 'sm2'"."""
    (tmp_path / "myplug.py").write_text(
        "import functools\nfrom attnprof.impls import register\nfrom attnprof.impls.base import AttentionImpl\n"
        "from attnprof.impls.softmax import softmax_attention\n"
        "register(AttentionImpl(name='sm2', family='test', fn=functools.partial(softmax_attention)))\n"
    )
    sweep = SWEEP.replace("'mine'", "'sm2'") + "print(attnprof.load_measurements(run, 'x.db')['status'].tolist())"
    done = _python(tmp_path, "-c", "import myplug\n" + sweep)
    assert done.returncode == 0 and done.stdout.strip() == "['ok']", done.stdout + done.stderr[-2000:]


def test_a_module_loaded_from_a_file_workers_cannot_import_is_refused_and_spoils_no_other_sweep(tmp_path):
    """A notebook loaded kern/mykern.py by spec_from_file_location (kern/ not on sys.path): a sweep of its impl
    failed every cell seconds later, and so did a sweep of softmax alone (workers imported every plugin module)."""
    (tmp_path / "kern").mkdir()
    (tmp_path / "kern" / "mykern.py").write_text(MODULE)
    loaded = (
        "import importlib.util, sys\n"
        "spec = importlib.util.spec_from_file_location('mykern', 'kern/mykern.py')\n"
        "module = sys.modules['mykern'] = importlib.util.module_from_spec(spec)\n"
        "spec.loader.exec_module(module)\n"
    )
    mine = _python(tmp_path, "-c", loaded + SWEEP)
    assert mine.returncode == 1 and "UsageError: impl 'mine' comes from module 'mykern' (" in mine.stderr, mine.stderr[-2000:]
    assert "cannot import by name: put its folder on sys.path" in mine.stderr and not (tmp_path / "x.db").exists()
    softmax = loaded + SWEEP.replace("'mine'", "'softmax'") + "print(attnprof.load_measurements(run, 'x.db')['status'].tolist())"
    done = _python(tmp_path, "-c", softmax)
    assert done.returncode == 0 and done.stdout.strip() == "['ok']", done.stderr[-2000:]


def test_a_built_in_name_is_refused_where_it_is_registered_even_before_the_built_ins_load(tmp_path):
    """Registered before anything loaded the built-ins, a user's "softmax" was accepted, and every lookup after
    failed with "registered twice: by __main__ and by attnprof.impls.softmax"."""
    early = (  # nothing imports attnprof.impls.softmax first (MODULE's softmax_attention would)
        "from attnprof.impls import register\nfrom attnprof.impls.base import AttentionImpl\n"
        "register(AttentionImpl(name='softmax', family='test', fn=lambda q, k, v, *, causal=False: q))\nprint('accepted')\n"
    )
    done = _python(tmp_path, "-c", early)
    assert done.returncode == 1 and "accepted" not in done.stdout, done.stdout
    assert "UsageError: impl name 'softmax' is a built-in's (attnprof.impls.softmax): register yours under another name" in done.stderr


def test_a_built_in_that_fails_to_import_fails_every_lookup_alike(tmp_path):
    """On torch 2.4 a built-in's custom_op raised on import: the first lookup said so, and every later one in that
    process (a notebook) said "unknown impl 'cosformer'", the registry left half-loaded and marked loaded."""
    script = (
        "import importlib.abc, sys\n"
        "class Planted(importlib.abc.MetaPathFinder):\n"
        "    def find_spec(self, name, path, target=None):\n"
        "        if name == 'attnprof.impls.nystromformer':\n"
        "            raise ValueError('planted: this torch cannot register the op')\n"
        "sys.meta_path.insert(0, Planted())\n"
        "from attnprof import impls\n"
        "for attempt in range(2):\n"
        "    try:\n"
        "        impls.get('cosformer')\n"
        "    except Exception as error:\n"
        "        print(type(error).__name__, error)\n"
    )
    done = _python(tmp_path, "-c", script)
    assert done.stdout.splitlines() == ["ValueError planted: this torch cannot register the op"] * 2, done.stdout + done.stderr[-2000:]


def test_loaded_measurements_have_one_dtype_per_column_whatever_the_data(tmp_path):
    """With no ok row, median_ms, flops and peak_bytes were object columns holding None; the GPU memory columns
    always were on the CPU. Numbers are floats with NaN now, and `noisy` a nullable boolean."""
    from attnprof.api import load_measurements, run_sweep

    db = tmp_path / "dtypes.db"
    run_sweep(Sweep(impls=parse_impls("fault:kind=wrong"), lengths=(64,), causal=(False,), device=("cpu",), rep_ms=5.0), db)
    frame = load_measurements("latest", db)
    assert frame["status"].tolist() == ["error"]
    for column in ("median_ms", "flops", "peak_bytes", "peak_alloc_bytes", "tflops", "check_error"):
        assert frame[column].dtype == "float64", column
    assert frame["noisy"].dtype == "boolean" and frame["median_ms"].isna().all()


def test_a_plugin_run_names_its_modules_to_reproduce_and_resume_it(tmp_path, monkeypatch):
    """Neither the stored command nor the environment named the plugin module: resumed without it, a run said only
    "unknown impl 'fault'", and its Reproduce command could not run anywhere else."""
    from attnprof import impls
    from attnprof.api import run_sweep
    from attnprof.dashboard.runinfo import reproduce_command
    from attnprof.store import Store

    db = tmp_path / "plugin.db"
    run_id = run_sweep(Sweep(impls=parse_impls("fault"), lengths=(64,), causal=(False,), device=("cpu",), rep_ms=5.0), db)
    store = Store.open(db, create=False)
    run = store.resolve_run(run_id)
    store.close()
    assert run.env["plugins"] == ["fake_impls"] and reproduce_command(run).startswith(
        f"PYTHONPATH={TESTS} ATTNPROF_PLUGINS=fake_impls attnprof sweep"
    )
    monkeypatch.delitem(impls._REGISTRY, "fault")  # a process without the plugin
    expected = f"from plugin module(s) fake_impls: resume it with PYTHONPATH={TESTS} ATTNPROF_PLUGINS=fake_impls"
    with pytest.raises(UsageError, match=re.escape(expected)):
        plan(Sweep(), db, resume=run_id)


def test_a_sweep_from_a_script_on_standard_input_runs(tmp_path):
    """`python - < script.py` names its main file '<stdin>': each spawned worker tried to run it and died
    (FileNotFoundError), and the rows said to add a `__main__` guard, which would not have helped."""
    script = SWEEP.replace("'mine'", "'softmax'") + "print(attnprof.load_measurements(run, 'x.db')['status'].tolist())"
    done = _python(tmp_path, "-", stdin=script)
    assert done.returncode == 0 and done.stdout.strip() == "['ok']", done.stderr[-2000:]


def test_the_api_lists_its_names_and_takes_one_string_where_it_takes_several(tmp_path):
    """dir(attnprof) held none of the lazily imported API (tab completion, help()), and run_gate(runs="alpha") read the
    runs 'a', 'l', 'p', 'h', 'a'."""
    from attnprof.store import Store

    assert {"run_sweep", "load_measurements", "analyse", "run_gate", "write_report", "UsageError"} <= set(dir(attnprof))
    import pandas as pd

    from attnprof.analysis import CONFIG

    columns = [*CONFIG, "seq_len", "status", "times_ms", "peak_bytes", "flops"]
    assert attnprof.analyse(pd.DataFrame(columns=columns), budget_bytes=2**60).frontiers.empty  # 1e18 bytes read "bad"
    from attnprof.records import RunInfo

    store = Store.open(tmp_path / "x.db")
    store.add_run(RunInfo("r1", "2026-01-01T00:00:00", {"impl_specs": [["softmax", {}]]}, {"torch_version": "x"}, "0.1.0"))
    store.close()
    rules = tmp_path / "rules.toml"
    rules.write_text('[[rule]]\nimpl = "softmax"\nmetric = "peak_bytes"\nmax_exponent = 2.5\n')
    with pytest.raises(attnprof.UsageError, match="'nosuchrun'"):
        attnprof.run_gate(rules, runs="nosuchrun", db=tmp_path / "x.db")
    # the status `attnprof gate` exits with, from the verdicts (a notebook had the list alone: an API audit)
    measured = tmp_path / "gate.db"
    run = attnprof.run_sweep(attnprof.Sweep(impls="softmax", lengths="512..4k", heads=(2,), causal="no", accounting=True), measured)
    verdicts, _ = attnprof.run_gate(rules, runs=run, db=measured)
    assert [v.verdict for v in verdicts] == ["PASS"] and attnprof.gate_exit_status(verdicts) == 0
    rules.write_text('[[rule]]\nimpl = "softmax"\nmetric = "peak_bytes"\nmax_exponent = 1.5\n')
    verdicts, _ = attnprof.run_gate(rules, runs=run, db=measured)
    assert [v.verdict for v in verdicts] == ["FAIL"] and attnprof.gate_exit_status(verdicts) == 1


def test_a_refuse_hook_may_return_one_reason_as_a_string():
    """ "too long" read "t; o; o;  ; l; o; n; g"."""
    from attnprof.impls.base import AttentionImpl
    from attnprof.impls.softmax import softmax_attention
    from attnprof.spec import Case

    impl = AttentionImpl(name="refuser", family="test", fn=softmax_attention, refuse=lambda case, options: "too long")
    assert impl.not_supported(Case(impl="refuser", seq_len=64)) == ["too long"]


def test_an_impl_from_a_module_never_put_in_sys_modules_is_refused_before_measuring(tmp_path):
    """Loaded with spec_from_file_location and exec_module alone, its sweep ran and every row read "unknown impl"."""
    import importlib.util

    from attnprof import impls

    path = tmp_path / "fileonly_kernels.py"
    path.write_text(
        "from attnprof.impls import register\nfrom attnprof.impls.base import AttentionImpl\n"
        "from attnprof.impls.softmax import softmax_attention\n"
        "register(AttentionImpl(name='fileonly', family='test', fn=softmax_attention))\n"
    )
    spec = importlib.util.spec_from_file_location("fileonly_kernels", path)
    try:
        spec.loader.exec_module(importlib.util.module_from_spec(spec))
        # with its file, which sys.modules cannot give: it read "module 'fileonly_kernels' (?)" (a plugin author's audit)
        said = f"'fileonly' comes from module 'fileonly_kernels' \\({re.escape(str(path))}\\), which"
        with pytest.raises(attnprof.UsageError, match=said):
            attnprof.plan(attnprof.Sweep(impls=attnprof.parse_impls("fileonly"), lengths=(64,)))
    finally:
        impls._REGISTRY.pop("fileonly", None)


EMPTY_DB = "empty.db"  # made in the test's folder
SHIPPED_RULES = str(Path(__file__).resolve().parents[1] / "scenarios" / "gate.toml")


@pytest.mark.parametrize(
    "call, fragment",
    [
        (lambda api: api.plan(None), "a sweep is an attnprof.Sweep, not NoneType"),
        (lambda api: api.run_sweep("softmax"), "a sweep is an attnprof.Sweep, not str"),
        (lambda api: api.plan(api.Sweep(impls="softmax", name=None)), "bad name None: a run's name is text"),
        (lambda api: api.plan(api.Sweep(impls=())), "bad impls (): give at least one value"),
        (lambda api: api.plan(api.Sweep(impls="softmax", causal=())), "bad causal (): give at least one value"),
        (lambda api: api.plan(api.Sweep(impls="softmax", mode=())), "bad mode (): give at least one value"),
        (lambda api: api.load_measurements("latest", 5), "bad database path 5: give a file path"),
        (lambda api: api.compare_runs(api.Sweep(), "latest", EMPTY_DB), "bad run: a run is named by its id or name (text), not a Sweep"),
        (lambda api: api.run_gate(None), "bad rules file None: give the path of a TOML file"),
        # pathlib's TypeError before (an API audit)
        (lambda api: api.write_report("latest", EMPTY_DB, out=123), "bad out 123: give a file path"),
        (lambda api: api.write_report("latest", EMPTY_DB, png_dir=123), "bad png_dir 123: give a file path"),
        (lambda api: api.export_runs("latest", EMPTY_DB, out=123), "bad out 123: give a file path"),
        (lambda api: api.export_runs("latest", EMPTY_DB, stream="x"), "bad stream 'x': give a text stream"),
        (lambda api: api.run_gate(SHIPPED_RULES, runs="latest", db=EMPTY_DB, baseline=123), "bad baseline 123: give a file path"),
    ],
)
def test_a_notebooks_slips_are_usage_errors_naming_the_value(call, fragment, tmp_path, monkeypatch):
    """A notebook API audit: these were AttributeError, TypeError or pandas' 'truth value is ambiguous' from deep inside,
    and impls=() recorded a "complete" run of 0 cases that then became `latest`."""
    from attnprof.store import Store

    Store.open(tmp_path / "empty.db").close()
    monkeypatch.chdir(tmp_path)
    with pytest.raises(UsageError) as raised:
        call(attnprof)
    assert fragment in str(raised.value)


def test_plugin_commands_name_the_folder_pythonpath_gave(tmp_path, monkeypatch):
    """The README's layout, a mykernels.py beside the user run with PYTHONPATH=., printed resume, retry and reproduce
    commands that failed "cannot import plugin module" from a fresh shell (a README audit): the folder only PYTHONPATH
    or the current folder gave is recorded, and the commands name it; an installed package's is not."""
    import sys

    from attnprof.dashboard.runinfo import plugin_prefix
    from attnprof.env import plugin_folders

    (tmp_path / "mykernels_here.py").write_text("X = 1\n")
    (tmp_path / "pack").mkdir()
    (tmp_path / "pack" / "__init__.py").write_text("")
    (tmp_path / "pack" / "kernels.py").write_text("Y = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setenv("PYTHONPATH", ".")
    monkeypatch.chdir(tmp_path)
    import mykernels_here  # noqa: F401
    import pack.kernels  # noqa: F401

    folder = str(tmp_path.resolve())
    assert plugin_folders(["mykernels_here", "pack.kernels", "numpy"]) == [folder]  # numpy: installed
    assert plugin_prefix(["mykernels_here"], [folder]) == f"PYTHONPATH={folder} ATTNPROF_PLUGINS=mykernels_here "
    assert plugin_prefix([], [folder]) == "" and plugin_prefix(["m"]) == "ATTNPROF_PLUGINS=m "
    for name in ("mykernels_here", "pack.kernels", "pack"):
        sys.modules.pop(name, None)
