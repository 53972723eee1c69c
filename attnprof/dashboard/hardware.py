"""Roofline ceilings: peak dense compute (TFLOP/s, per dtype) and memory bandwidth (TB/s) of known devices.

Vendor datasheet figures, dense (no 2:4 sparsity), tensor cores for 16-bit types; float32 is the non-tensor-core
rate because torch does not use TF32 for matmuls unless asked to. Keyed by a substring of the run's
`env["gpu_name"]` (as torch reports it, e.g. "NVIDIA H100 80GB HBM3"), most specific first.
"""

from __future__ import annotations

import re
from dataclasses import dataclass


@dataclass(frozen=True)
class Ceilings:
    device: str  # what the figures are for, shown on the plot
    tflops: dict  # dtype -> peak TFLOP/s
    tbps: float  # peak memory bandwidth, TB/s
    known: bool  # False: a rough default; the plot says to override it


# (words that must all appear in the upper-cased gpu_name, name, {dtype: TFLOP/s}, TB/s); a word is not followed by a
# digit there ("L4" read "NVIDIA L40" as an L4, known, so no override was asked for: a GPU-path review)
GPUS = (
    (("GH200",), "GH200", {"bfloat16": 989, "float16": 989, "float32": 67}, 4.0),
    (("H200",), "H200", {"bfloat16": 989, "float16": 989, "float32": 67}, 4.8),
    (("H100", "NVL"), "H100 NVL", {"bfloat16": 835, "float16": 835, "float32": 60}, 3.9),
    (("H100", "PCIE"), "H100 PCIe", {"bfloat16": 756, "float16": 756, "float32": 51}, 2.0),
    (("H100",), "H100 SXM", {"bfloat16": 989, "float16": 989, "float32": 67}, 3.35),
    (("A100",), "A100", {"bfloat16": 312, "float16": 312, "float32": 19.5}, 2.0),
    (("L40S",), "L40S", {"bfloat16": 362, "float16": 362, "float32": 91.6}, 0.864),
    (("L40",), "L40", {"bfloat16": 181, "float16": 181, "float32": 90.5}, 0.864),
    (("L4",), "L4", {"bfloat16": 121, "float16": 121, "float32": 30.3}, 0.3),
    (("A10",), "A10", {"bfloat16": 125, "float16": 125, "float32": 31.2}, 0.6),
    (("4090",), "RTX 4090", {"bfloat16": 165, "float16": 165, "float32": 82.6}, 1.008),
    (("V100",), "V100", {"bfloat16": 125, "float16": 125, "float32": 15.7}, 0.9),  # no bf16 units: fp16 rate as bound
)
# ~3 GHz x 64 float32 FLOP/cycle (two AVX-512 FMA units): an upper bound, not a measurement. The AVX2 figure (0.1) sat
# under sdpa's measured 0.229-0.267 TFLOP/s on this project's 2-thread AVX-512 machine (a dashboard audit)
CPU_TFLOPS_PER_THREAD = 0.2
CPU_TBPS = 0.05  # a dual-channel DDR4/DDR5 desktop; servers have more, hence the override inputs


def ceilings_for(env: dict, device: str) -> Ceilings:
    """The ceilings of the device a run measured on (`device`: the cells' device column, cpu or cuda[:N])."""
    if device.startswith("cuda"):
        name = str(env.get("gpu_name") or "")
        for needles, label, tflops, tbps in GPUS:
            if all(re.search(rf"{needle}(?!\d)", name.upper()) for needle in needles):
                return Ceilings(label, dict(tflops), tbps, True)
        fallback = next(g for g in GPUS if g[1] == "H100 SXM")
        return Ceilings(f"{name or 'unknown GPU'} (not in the table: H100 SXM figures)", dict(fallback[2]), fallback[3], False)
    threads = int(env.get("cpu_threads") or 1)
    peak = round(threads * CPU_TFLOPS_PER_THREAD, 3)
    cpu = env.get("cpu") or "CPU"
    return Ceilings(f"{cpu}, {threads} threads (rough estimate)", {"float32": peak, "bfloat16": peak, "float16": peak}, CPU_TBPS, False)


def with_overrides(ceilings: Ceilings, tflops: float | None, tbps: float | None) -> Ceilings:
    """The user's two numbers replace the table's (compute for every dtype)."""
    compute = {dtype: float(tflops) for dtype in ceilings.tflops} if tflops and tflops > 0 else ceilings.tflops
    bandwidth = float(tbps) if tbps and tbps > 0 else ceilings.tbps
    custom = (tflops and tflops > 0) or (tbps and tbps > 0)
    return Ceilings(ceilings.device + (" (overridden)" if custom else ""), compute, bandwidth, ceilings.known or bool(custom))
