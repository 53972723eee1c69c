"""Sweeps small enough for the 2-core CI machine, shared by the runner tests."""


def small_sweep(impl: str, lengths=(64, 128, 256), **changes):
    """A sweep small enough for the 2-core CI machine: 2 heads, head dim 16, tiny time budgets."""
    from attnprof.spec import Sweep, parse_impls

    settings = dict(impls=parse_impls(impl), lengths=tuple(lengths), heads=(2,), head_dim=(16,), device=("cpu",), dtype=("float32",),
                    causal=(False,), warmup_ms=1.0, rep_ms=5.0, timeout=60.0)  # fmt: skip
    settings.update(changes)
    return Sweep(**settings)
