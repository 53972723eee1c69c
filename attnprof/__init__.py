"""attnprof: a memory and throughput profiler for attention implementations.

The library API a notebook uses is the one the CLI calls:

    import attnprof
    sweep = attnprof.Sweep(impls=attnprof.parse_impls("softmax,sdpa"), lengths=(256, 512))
    run_id = attnprof.run_sweep(sweep, db="my.db")
    frame = attnprof.load_measurements("latest", db="my.db")   # a pandas DataFrame
    memory = attnprof.run_budget("latest", db="my.db")  # the device's memory: the budget, and what its OOMs speak for
    result = attnprof.analyse(frame, budget_bytes=memory, device_bytes=memory)  # fits, crossovers, frontiers
    cells, exponents = attnprof.compare_runs("baseline-run", "latest", db="my.db")  # as `attnprof compare`
    path, pngs = attnprof.write_report("latest", db="my.db")  # as `attnprof report`
    figures = attnprof.report_figures("latest", db="my.db")  # its plotly Figures by name, to show or restyle
    verdicts, run_ids = attnprof.run_gate("rules.toml", db="my.db")  # as `attnprof gate`
    status = attnprof.gate_exit_status(verdicts)  # 0 pass, 1 a rule failed, 3 one could not be judged
    attnprof.plan(sweep)  # (case, refusal reasons) per case: `sweep --dry-run`
    runs = attnprof.list_runs(db="my.db")  # a DataFrame, newest first: `attnprof runs`
    attnprof.export_runs(["latest"], db="my.db", output_format="baseline", out="baseline.jsonl")  # `attnprof export`
Bad input raises attnprof.UsageError (one line naming the bad value); Ctrl-C during a sweep attnprof.SweepInterrupted,
a KeyboardInterrupt carrying the run id to resume.
"""

__version__ = "0.1.0"

_LAZY = {
    "run_sweep": "attnprof.api",
    "load_measurements": "attnprof.api",
    "Case": "attnprof.spec",
    "Sweep": "attnprof.spec",
    "parse_impls": "attnprof.spec",
    "parse_lengths": "attnprof.spec",
    "analyse": "attnprof.analysis",
    "run_budget": "attnprof.api",
    "plan": "attnprof.api",
    "compare_runs": "attnprof.api",
    "write_report": "attnprof.report",
    "report_figures": "attnprof.report",
    "run_gate": "attnprof.gating",
    "gate_exit_status": "attnprof.gate",
    "list_runs": "attnprof.run_export",
    "export_runs": "attnprof.run_export",
    "UsageError": "attnprof.errors",
    "SweepInterrupted": "attnprof.runner",
    "Progress": "attnprof.progress_base",
}
_SUBMODULES = ("analysis", "impls")  # named in the README as attnprof.analysis.analyse, attnprof.impls.register


def __getattr__(name):
    # Lazy so that `attnprof --help` and `import attnprof` do not pay for torch or pandas.
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    if name in _SUBMODULES:
        import importlib

        return importlib.import_module(f"attnprof.{name}")
    raise AttributeError(f"module 'attnprof' has no attribute {name!r}")


def __dir__():
    # the lazy names too: tab completion and help(attnprof) listed none of the API
    return sorted({*globals(), *_LAZY, *_SUBMODULES})


__all__ = ["__version__", *_LAZY]
