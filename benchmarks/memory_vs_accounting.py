"""Does the exact accounting on `meta` predict the CUDA allocator's peak? (GPU only: the check a lent GPU owes.)

`sweep --accounting` (and the memory rules of scenarios/targets.toml) stand in for GPU memory on machines
without one. This runs the same grid twice into one database, once measured on CUDA (allocator peak) and
once accounted on meta (live bytes, or the analytic model of a fused kernel), and prints one line per
cell with the ratio allocator / accounting. Exit status 1 when a ratio is outside the band, 2 without CUDA.

    python benchmarks/memory_vs_accounting.py [--db FILE] [--lengths 4k,16k] [--band 0.1] [--markdown FILE]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnprof.api import run_sweep  # noqa: E402
from attnprof.errors import UsageError  # noqa: E402
from attnprof.records import Status  # noqa: E402
from attnprof.spec import Sweep, parse_impls, parse_lengths  # noqa: E402
from attnprof.store import Store  # noqa: E402


def main() -> int:
    args = parse_args()
    import torch

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("memory_vs_accounting: no CUDA device here; this check needs a GPU (--device cpu only rehearses the script)", file=sys.stderr)
        return 2
    grid = dict(
        impls=parse_impls(args.impl),
        lengths=parse_lengths(args.lengths),
        heads=(16,),
        head_dim=(64,),
        dtype=(args.dtype,),
        causal=(False, True),
        mode=("fwd", "fwd_bwd"),
    )
    try:
        measured = run_sweep(Sweep(device=(args.device,), name=f"memory-vs-accounting: {args.device}", **grid), args.db)
        accounted = run_sweep(Sweep(accounting=True, name="memory-vs-accounting: meta", **grid), args.db)
    except UsageError as error:
        print(f"memory_vs_accounting: {error}", file=sys.stderr)
        return 2
    rows = compare(args.db, measured, accounted, args.band)
    table = render(rows)
    print(table)
    if args.markdown:
        Path(args.markdown).write_text(table + "\n")
    return 1 if any(row["flag"] for row in rows) else 0


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", default="memory-vs-accounting.db")
    parser.add_argument("--impl", default="all")
    parser.add_argument("--lengths", default="4k,16k")
    parser.add_argument("--device", default="cuda", help="cuda (the check); cpu rehearses the script on host peaks")
    parser.add_argument("--band", type=float, default=0.1, help="allowed relative difference (default 0.1)")
    parser.add_argument("--dtype", default="bfloat16")
    parser.add_argument("--markdown", default=None, help="also write the table to this file")
    return parser.parse_args()


def cell_key(case) -> tuple:
    """A case without its device: the measured cell and its accounted twin share it."""
    return (case.impl, case.options, case.mode, case.causal, case.dtype, case.batch, case.heads, case.head_dim, case.seq_len)


NOT_MEASURED = (Status.UNSUPPORTED, Status.SKIPPED)  # a cell with nothing to compare, and no fault


def compare(db, measured_run: str, accounted_run: str, band: float) -> list[dict]:
    """One row per measured cell: its accounted twin, allocator / accounting, and a flag saying why the
    cell fails the check (empty when it passes or has nothing to compare)."""
    store = Store.open(db, create=False)
    try:
        accounted = {cell_key(m.case): m for m in store.measurements(accounted_run)}
        rows = []
        for m in store.measurements(measured_run):
            twin = accounted.get(cell_key(m.case))
            row = dict(case=m.case, measured=m, accounted=twin, ratio=None, flag="")
            if m.status in NOT_MEASURED:
                pass
            elif m.status != Status.OK:
                row["flag"] = f"measurement {m.status.value}"
            elif twin is None or twin.status != Status.OK or not twin.peak_bytes:
                row["flag"] = "no accounting"
            else:
                row["ratio"] = m.peak_bytes / twin.peak_bytes
                row["flag"] = f"outside 1 +- {band:g}" if abs(row["ratio"] - 1) > band else ""
            rows.append(row)
        return rows
    finally:
        store.close()


def render(rows: list[dict]) -> str:
    mib = lambda b: "-" if b is None else f"{b / 2**20:,.1f}"
    lines = [
        "| impl | causal | mode | N | allocator MiB | accounting MiB (source) | ratio |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for row in rows:
        case, measured, twin = row["case"], row["measured"], row["accounted"]
        got = mib(measured.peak_bytes) if measured.status == Status.OK else f"{measured.status.value}: {measured.reason[:60]}"
        want = "-" if twin is None else f"{mib(twin.peak_bytes)} ({twin.peak_source or twin.status.value})"
        ratio = "-" if row["ratio"] is None else f"{row['ratio']:.3f}"
        flag = f" **{row['flag']}**" if row["flag"] else ""
        lines.append(f"| {case.impl} | {'yes' if case.causal else 'no'} | {case.mode} | {case.seq_len} | {got} | {want} | {ratio}{flag} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
