"""How a worker starts (the spare, started before the sweep's imports) and ends (stopped after the sweep, or orphaned
by a parent killed outright)."""

import multiprocessing

import pytest
from small_sweeps import small_sweep

from attnprof import runner
from attnprof.api import run_sweep
from attnprof.errors import UsageError
from attnprof.records import Status
from attnprof.spec import Sweep, parse_impls
from attnprof.store import Store


def test_the_spare_worker_started_with_the_sweep_measures_its_first_device(db, tmp_path, monkeypatch):
    spares = []
    start = runner.start_spare_worker

    def start_and_note():
        start()
        spares.append(runner._spare[0].pid)

    monkeypatch.setattr(runner, "start_spare_worker", start_and_note)
    pid_file = tmp_path / "pid"
    run_id = run_sweep(small_sweep(f"fault:kind=pid_file,pid_file={pid_file}", lengths=(64,)), db)
    store = Store.open(db, create=False)
    (row,) = store.measurements(run_id)
    store.close()
    assert row.status == Status.OK, row.reason
    assert [int(pid_file.read_text())] == spares and not multiprocessing.active_children()


def test_a_refused_sweep_leaves_no_spare_worker_behind(db):
    with pytest.raises(UsageError, match="no-such-impl"):
        run_sweep(Sweep(impls=parse_impls("no-such-impl"), lengths=(64,)), db)
    assert runner._spare is None and not multiprocessing.active_children()


def test_a_stopped_worker_ends_at_once_without_losing_what_an_impl_printed(db, capfd, monkeypatch):
    """The worker skips Python's finalisation when stopped (about 1 s at the end of every sweep), after flushing what
    an impl printed: to a pipe or a file, print keeps its line in a buffer that only that finalisation wrote out."""
    monkeypatch.delenv("PYTHONUNBUFFERED", raising=False)  # the worker inherits it: its prints buffered, as by default
    run_id = run_sweep(small_sweep("fault:kind=print", lengths=(64,)), db)
    store = Store.open(db, create=False)
    (row,) = store.measurements(run_id)
    store.close()
    assert row.status == Status.OK, row.reason
    said = capfd.readouterr()
    # on standard error: on standard output it landed in the middle of `attnprof sweep > table.txt` (a robustness audit)
    assert "fault impl ran at N = 64" in said.err and "fault impl ran" not in said.out


def test_a_worker_whose_parent_is_gone_exits_without_a_traceback(capfd):
    """After `kill -9` of a notebook's sweep, its idle worker printed a ConnectionResetError traceback (from
    connection.recv) onto the terminal the two shared."""
    import multiprocessing

    from attnprof.worker_process import worker_main

    context = multiprocessing.get_context("spawn")
    parent, child = context.Pipe()
    process = context.Process(target=worker_main, args=(child, "cpu", ()), daemon=True)
    process.start()
    child.close()
    assert parent.poll(120) and parent.recv() == ("ready",)
    parent.close()  # what the parent's death does to its end
    process.join(30)
    assert process.exitcode == 0 and "Traceback" not in capfd.readouterr().err


@pytest.mark.parametrize("at_length", [0, 300], ids=["in the check", "in the memory pass"])
def test_a_failed_calls_tensors_held_in_a_cycle_are_freed_before_the_next_case(at_length):
    """The collect after a failure ran inside the except block, where the exception still held the failed call's frames:
    a tensor in a reference cycle stayed allocated through the cache release into the next cases (a GPU-path review). A
    check that raised was converted to its row without any collect."""
    import gc

    import fake_impls

    from attnprof.spec import Case
    from attnprof.worker import CaseMeasurer, Settings

    case = Case(impl="fault", seq_len=300, heads=2, head_dim=16, options=(("at_length", at_length), ("kind", "cycle_raise")))
    fake_impls.HELD_IN_A_CYCLE.clear()
    gc.collect()
    gc.disable()  # only the worker's own collect may free the cycle
    try:
        measurement = CaseMeasurer().measure(case, Settings(warmup_ms=1.0, rep_ms=5.0))
        held = list(fake_impls.HELD_IN_A_CYCLE)
    finally:
        gc.enable()
    assert measurement.status == Status.ERROR and "planted failure with a cycle" in measurement.reason, measurement.reason
    assert held and all(ref() is None for ref in held), "a tensor of the failed call outlived the case"
