"""The GPU kit's scripts run on this machine as far as they can: the counts on meta, and a clear refusal
(exit 2, one line) where CUDA is needed and missing."""

import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def run(*args):
    return subprocess.run([sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_kernel_profile_prints_the_counts_on_meta():
    result = run("benchmarks/kernel_profile.py", "--device", "meta", "--impl", "cosformer,nystromformer", "--length", "8k")
    assert result.returncode == 0, result.stderr
    shape, header, *lines = result.stdout.splitlines()
    assert shape == "N=8192 B=1 H=16 d=64 bfloat16 fwd on meta" and header.split()[:3] == ["impl", "causal", "ms"]
    rows = {tuple(line.split()[:2]): line.split() for line in lines}
    assert rows[("cosformer", "False")][3:6] == ["28", "0.16", "0.36"]  # ops, GB written, GB moved: the bidirectional device plan at 8k
    assert rows[("cosformer", "True")][3] == "46"
    assert "no causal form" in " ".join(rows[("nystromformer", "True")])
    assert rows[("nystromformer", "False")][3] == "49"  # a warm call's ops: not the first call's drawing of the conv filter (58)


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal without CUDA")
def test_kernel_profile_needs_cuda_to_time():
    result = run("benchmarks/kernel_profile.py", "--impl", "cosformer")
    assert result.returncode == 2 and "no CUDA device" in result.stderr and "Traceback" not in result.stderr


def test_kernel_profile_refuses_bad_shapes():
    for bad, said in (("--length=3x", "bad length '3x'"), ("--length=0", "must be positive"), ("--heads=0", "bad heads '0'")):
        result = run("benchmarks/kernel_profile.py", "--device", "meta", bad)
        assert result.returncode == 2 and said in result.stderr and "Traceback" not in result.stderr, result.stderr


def test_kernel_profile_refuses_an_unknown_impl():
    result = run("benchmarks/kernel_profile.py", "--device", "meta", "--impl", "cosformer,nope")
    assert result.returncode == 2 and "unknown impl 'nope'" in result.stderr and "Traceback" not in result.stderr


def test_each_gpu_session_part_fits_one_device_call():
    """The device tool runs a command for at most 600 s: each part's step limits (plus the environment check),
    and the 15 s each step may take to die after its SIGINT, must fit."""
    import re

    script = (ROOT / "benchmarks" / "gpu_session.sh").read_text()
    assert subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "gpu_session.sh")]).returncode == 0
    env_limit = int(re.search(r"^ENV_LIMIT=(\d+)", script, re.M).group(1))
    parts = dict(re.findall(r"^(\d)\)\n(.*?)^    ;;", script, re.M | re.S))
    assert sorted(parts) == ["1", "2", "3", "4"]
    for name, body in parts.items():
        limits = [int(limit) for limit in re.findall(r"step [\w-]+ (\d+) ", body)]
        assert limits, f"part {name} has no steps"
        assert env_limit + 5 + sum(limits) + 15 * len(limits) <= 600, f"part {name}: {limits}"


def test_gpu_session_refuses_an_unknown_part_and_a_machine_without_cuda(tmp_path):
    script = str(ROOT / "benchmarks" / "gpu_session.sh")
    env = {"OUT": str(tmp_path), "PATH": __import__("os").environ["PATH"], "PYTHON": sys.executable}
    unknown = subprocess.run(["bash", script, "9"], capture_output=True, text=True, env=env, timeout=120)
    assert unknown.returncode == 2 and unknown.stderr.strip() == "gpu_session: unknown part '9'; choose 1, 2, 3 or 4"
    if not torch.cuda.is_available():
        refused = subprocess.run(["bash", script, "3"], capture_output=True, text=True, env=env, timeout=120)
        assert refused.returncode == 2 and refused.stdout == ""
        assert refused.stderr.strip() == "gpu_session: no CUDA device here; nothing to check"


def test_mixture_plans_agree_and_are_timed_on_the_cpu():
    result = run("benchmarks/mixture_plans.py", "--device", "cpu", "--length", "1k")
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[2:-1]]
    assert len(rows) == 8  # four plans, both causalities
    assert [row[:3] for row in rows[:1]] == [["flash", "+", "steps"]] and rows[0][3] == "*"  # the CPU's default first
    for row in rows:
        ms, error = float(row[-3]), float(row[-1])
        assert ms > 0 and error < 3e-2, row  # a plan whose output disagreed would print nan


@pytest.mark.parametrize("args, fragment", [(["--device", "meta"], "bad device 'meta'"), (["--length", "1k,2k"], "give one length")])
def test_mixture_plans_refuses_bad_input(args, fragment):
    result = run("benchmarks/mixture_plans.py", *args)
    assert result.returncode == 2 and fragment in result.stderr and "Traceback" not in result.stderr


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is here: the refusal cannot be seen")
def test_mixture_plans_needs_cuda_by_default():
    result = run("benchmarks/mixture_plans.py", "--length", "1k")
    assert result.returncode == 2 and result.stderr.strip() == "mixture_plans: no CUDA device here (try --device cpu)"


TRITON_KERNELS = ("key_states_kernel", "bidirectional_out_kernel", "causal_out_kernel", "landmark_values_kernel", "pinv_values_kernel",
                  "nystrom_out_kernel", "softmax_values_kernel", "softmax_values_qk_kernel", "softmax_values_qk_kernel_rows",
                  "prefix_max_kernel", "prefix_max_kernel_reversed")  # fmt: skip


def triton_resources(*args):
    pytest.importorskip("triton")
    result = run("benchmarks/triton_resources.py", *args)
    return result, [line.split() for line in result.stdout.splitlines()[2:]]


def test_triton_kernels_compile_for_the_gpu_without_spilling_much():
    """cosFormer's, Nyströmformer's and Combiner's kernels, compiled for sm_90 (the H100s and H200s here) by Triton's
    own compiler and ptxas, no GPU needed, within the target's shared memory (else exit 1). Measured, bf16, d = 64:
    stacks of 0, 0, 232, 0, 368, 0, 32, 0, 0, 0 and 0 bytes (key states, bidirectional, causal output, landmark values,
    pseudo-inverse, Nyström output, softmax and values from logits and from queries and keys, the latter as Axial's row
    attention launches it, on values and keys together, 128 wide: 160 KiB of shared memory; running max both ways;
    the running max with 40 registers and no shared memory; the pseudo-inverse holds five 64 x 64 fp32 matrices in one
    program). (For sm_80, --arch 80: 0, 48, 712 and 0 for cosFormer's three and the softmax before it took its band;
    not run here, the GPUs lent to this project being H100s and H200s.)"""
    arch = 90
    result, rows = triton_resources("--arch", str(arch), "--dtype", "bf16,fp32")
    assert result.returncode == 0, result.stdout + result.stderr
    assert [row[:2] for row in rows] == [[kernel, dtype] for dtype in ("bfloat16", "float32") for kernel in TRITON_KERNELS]
    for kernel, dtype, _warps, registers, stack, shared in rows:
        # every kernel but the running max (one row of values a step, in registers) stages its tiles in shared memory
        assert int(registers) <= 255 and (int(shared) > 0) != kernel.startswith("prefix_max")
        if dtype == "bfloat16":  # the plan table 3 times: at most a few spilled registers
            assert int(stack) <= 512, (kernel, stack)


CAUSAL_OUT = ("--kernel", "causal_out_kernel")


@pytest.mark.parametrize(("args", "fits"), [
    (("--head-dim", "128", "--chunk", "64", "--dtype", "fp32"), True),  # the largest head dim the plans take (fp32: the most)
    (("--head-dim", "128", "--chunk", "128", "--dtype", "bf16", *CAUSAL_OUT), True),
    (("--head-dim", "128", "--chunk", "128", "--dtype", "fp16", *CAUSAL_OUT), False),  # 256 KiB: the plan refuses it
], ids=["d128-chunk64", "d128-chunk128-bf16", "d128-chunk128-fp16"])  # fmt: skip
def test_the_largest_launches_the_plans_take_fit_an_h100s_shared_memory(args, fits):
    """A launch compiled to more shared memory than the GPU gives a block fails there (Triton's OutOfResources),
    never in the interpreter: fp32 and fp16 causal kernels at d = 128 and chunk 128 took 256 KiB of an H100's 227
    (with Triton's default pipelining, 294 KiB at d = 64 too), found by a reviewer from these compiles. After a
    reorder of the same code fp32 takes 192 KiB there and fp16 still 256; the plan refuses both."""
    result, rows = triton_resources(*args)
    assert result.returncode == (0 if fits else 1), result.stdout + result.stderr
    over = [row[0] for row in rows if "over" in row]
    assert over == ([] if fits else ["causal_out_kernel"])


def test_triton_resources_refuses_a_chunk_the_plan_does_not_take():
    result = run("benchmarks/triton_resources.py", "--chunk", "48")
    assert result.returncode == 2 and result.stderr.strip() == "triton_resources: bad chunk 48: one of 16, 32, 64, 128"
