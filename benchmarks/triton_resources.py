"""The Triton kernels (cosFormer's, Nyströmformer's and Combiner's backend=triton) compiled for a GPU on any machine
(no GPU needed): Triton's compiler and the ptxas and cuobjdump its package carries. For each kernel, as the
plans launch it (the plans' launch_constants), one line with the registers
per thread, the local-memory stack (spilled registers) and the dynamic shared memory. A kernel that does not
compile for the target is the failure this catches before a GPU session; a large stack is a kernel that will
wait on local memory.

    python benchmarks/triton_resources.py [--arch 90] [--dtype bfloat16,float32,float16] [--chunk 64]
                                          [--length 64k] [--heads 16] [--head-dim 64] [--warps N]
                                          [--kernel causal_out_kernel,...]

Measured with Triton 3.6.0 for sm_90, d = 64, chunk 64: bf16 key states 230 registers, no stack; bidirectional
output 255, none; causal output 255 and a 232-byte stack at 8 warps (1088 bytes at 4, with constexpr part
sizes); the fused softmax and values 255 and a 32-byte stack (its qk forms 239 and 255, none; 512 bytes at 4
warps); fp32 with "ieee" dots compiled to 32 registers and 6-28 KB stacks, with "tf32x3" to 255 and 0.1-2 KB.
Exit status: 0 every kernel compiled within the target's shared memory, 1 one did not, 2 bad usage or no triton.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from pathlib import Path

os.environ.pop("TRITON_INTERPRET", None)  # Triton reads it as it decorates: compiled kernels, not interpreted ones
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from attnprof.errors import UsageError  # noqa: E402
from attnprof.spec import parse_dtypes, parse_length, parse_sizes  # noqa: E402

COMBINER_KERNELS = (
    "softmax_values_kernel",
    "softmax_values_qk_kernel",
    "softmax_values_qk_kernel_rows",
    "prefix_max_kernel",
    "prefix_max_kernel_reversed",
)  # _rows: Axial's row attention, on values and keys together (2 d wide, where that fits); _reversed: REVERSE=True
LAUNCHED_AS = {"softmax_values_qk_kernel_rows": "softmax_values_qk_kernel", "prefix_max_kernel_reversed": "prefix_max_kernel"}
NYSTROM_KERNELS = ("landmark_values_kernel", "pinv_values_kernel", "nystrom_out_kernel")
KERNELS = ("key_states_kernel", "bidirectional_out_kernel", "causal_out_kernel", *NYSTROM_KERNELS, *COMBINER_KERNELS)
# Shared memory a block may take (cudaDevAttrMaxSharedMemoryPerBlockOptin), by compute capability: a kernel
# compiled to more is refused at launch (Triton's OutOfResources).
SHARED_LIMIT = {80: 166912, 86: 101376, 89: 101376, 90: 232448}
MIXTURE_KEYS = 512  # any count: compiled kernels take the keys (and cosFormer's part sizes) at run time


def main() -> int:
    try:
        args = parse_args()
        import triton  # noqa: F401
    except UsageError as error:
        print(f"triton_resources: {error}", file=sys.stderr)
        return 2
    except ImportError:
        print("triton_resources: needs the triton package (pip install triton)", file=sys.stderr)
        return 2
    import torch

    print(f"sm_{args.arch}, N={args.length} B*H={args.heads} d={args.head_dim}, causal chunk {args.chunk}")
    print(f"{'kernel':<30} {'dtype':<9} {'warps':>5} {'registers':>9} {'stack B':>8} {'shared B':>8}")
    failed = False
    for dtype in args.dtype:
        torch_dtype = getattr(torch, dtype)
        for kernel in args.kernel:
            constants = launch_constants(kernel, torch_dtype, args)
            if args.warps:
                constants["num_warps"] = args.warps
            try:
                usage = resources(kernel, torch_dtype, constants, args.arch)
            except Exception as error:  # a compile error is this check's finding: report it, go on with the others
                failed = True
                print(f"{kernel:<30} {dtype:<9} did not compile: {str(error).strip().splitlines()[-1] if str(error).strip() else error!r}")
                continue
            over = usage["SHARED"] > SHARED_LIMIT.get(args.arch, usage["SHARED"])
            failed = failed or over
            note = f"  over sm_{args.arch}'s {SHARED_LIMIT[args.arch]} B a block: it would not launch" if over else ""
            print(f"{kernel:<30} {dtype:<9} {constants['num_warps']:>5} {usage['REG']:>9} {usage['STACK']:>8} {usage['SHARED']:>8}{note}")
    return 1 if failed else 0


def launch_constants(kernel: str, dtype, args) -> dict:
    """The constexprs and num_warps the plans launch `kernel` with, for inputs of `dtype`."""
    import torch

    from attnprof.impls.combiner import triton_scan, triton_softmax
    from attnprof.impls.cosformer import triton_plan

    if kernel.startswith("softmax_values"):  # fp32 logits (or queries and keys) and values whatever the inputs (Combiner upcasts halves)
        depth = args.head_dim if kernel.startswith("softmax_values_qk") else None
        both = kernel.endswith("_rows") and 2 * args.head_dim <= triton_softmax.MAX_HEAD_DIM  # else two launches, d wide
        return triton_softmax.launch_constants(MIXTURE_KEYS, args.head_dim * (2 if both else 1), dtype == torch.float32, depth=depth)
    if kernel.startswith("prefix_max_kernel"):
        return triton_scan.launch_constants(args.head_dim, reverse=kernel.endswith("_reversed"))
    if kernel in NYSTROM_KERNELS:  # the most landmarks it takes (the profiled default, 64), 6 iterations, 33 taps
        from attnprof.impls.nystromformer import triton_plan as nystrom_plan

        sizes = {"keys": args.length, "groups": args.heads, "taps": 33}
        landmarks = nystrom_plan.MAX_LANDMARKS
        return nystrom_plan.launch_constants(kernel, dtype, landmarks, args.head_dim, args.head_dim, **sizes) | {"INTERPRETED": False}
    tile = args.chunk if kernel == "causal_out_kernel" else triton_plan.KEY_BLOCK
    rows = triton_plan.parts_of(args.length, args.heads, tile)
    return triton_plan.launch_constants(kernel, dtype, args.head_dim, args.head_dim, rows, args.chunk)


def resources(kernel: str, dtype, constants: dict, arch: int) -> dict[str, int]:
    """Compile `kernel` for sm_<arch> and read its resource usage from the cubin."""
    import torch
    import triton
    from triton.backends.compiler import GPUTarget
    from triton.compiler import ASTSource

    from attnprof.impls.combiner import triton_kernels as combiner_kernels
    from attnprof.impls.cosformer import triton_kernels as cosformer_kernels
    from attnprof.impls.nystromformer import triton_kernels as nystrom_kernels

    combiner = kernel in COMBINER_KERNELS
    module = combiner_kernels if combiner else nystrom_kernels if kernel in NYSTROM_KERNELS else cosformer_kernels
    fn = getattr(module, LAUNCHED_AS.get(kernel, kernel))
    constants = dict(constants)
    options = {key: constants.pop(key) for key in ("num_warps", "num_stages") if key in constants}
    source = ASTSource(fn=fn, signature=signature(fn.arg_names, torch.float32 if combiner else dtype, constants), constexprs=constants)
    compiled = triton.compile(source, target=GPUTarget("cuda", arch, 32), options=options)
    with tempfile.TemporaryDirectory() as folder:
        cubin = Path(folder) / "kernel.cubin"
        cubin.write_bytes(compiled.asm["cubin"])
        cuobjdump = Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "cuobjdump"
        dump = subprocess.run([str(cuobjdump), "--dump-resource-usage", str(cubin)], capture_output=True, text=True, check=True).stdout
    line = next(line for line in dump.splitlines() if "REG:" in line)
    usage = {
        key: int(value) for key, value in (field.split(":") for field in line.split() if ":" in field and field.split(":")[1].isdigit())
    }
    return {**usage, "SHARED": compiled.metadata.shared}  # Triton's dynamic shared memory (the cubin's SHARED is its static part)


def signature(names, dtype, constants: dict) -> dict[str, str]:
    """Triton types of a kernel's arguments: q, k, v, out (and Nyströmformer's W and conv filter) in `dtype` (the
    inputs' for cosFormer and Nyströmformer; fp32 for Combiner, which upcasts halves before its kernels), every other
    pointer fp32, eps and scale fp32, the rest int32 (as torch passes them), the constexprs."""
    triton_type = {"float32": "fp32", "float16": "fp16", "bfloat16": "bf16"}[str(dtype).removeprefix("torch.")]
    kinds = {}
    for name in names:
        if name in constants:
            kinds[name] = "constexpr"
        elif name.endswith("_ptr"):
            kinds[name] = "*" + (triton_type if name in ("q_ptr", "k_ptr", "v_ptr", "out_ptr", "w_ptr", "conv_ptr") else "fp32")
        else:
            kinds[name] = "fp32" if name in ("eps", "scale") else "i32"
    return kinds


def parse_args():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--arch", type=int, default=90, help="compute capability, e.g. 80 or 90 (default: %(default)s)")
    parser.add_argument("--dtype", default="bfloat16,float32,float16", help="input dtypes (default: %(default)s)")
    parser.add_argument("--chunk", type=int, default=64, help="causal chunk length: 16, 32, 64 or 128 (default: %(default)s)")
    parser.add_argument("--length", default="64k", help="sequence length, for the part sizes (default: %(default)s)")
    parser.add_argument("--heads", default="16", help="batch * heads (default: %(default)s)")
    parser.add_argument("--head-dim", default="64", help="(default: %(default)s)")
    parser.add_argument("--warps", type=int, default=0, help="num_warps for every kernel (default: the plan's)")
    parser.add_argument("--kernel", default=",".join(KERNELS), help="kernels to compile (default: %(default)s)")
    args = parser.parse_args()
    from attnprof.impls.cosformer import triton_plan

    if args.chunk not in triton_plan.CHUNKS:
        raise UsageError(f"bad chunk {args.chunk}: one of {', '.join(map(str, triton_plan.CHUNKS))}")
    args.kernel = [name.strip() for name in args.kernel.split(",") if name.strip()]
    unknown = [name for name in args.kernel if name not in KERNELS]
    if unknown or not args.kernel:
        raise UsageError(f"bad kernel {unknown[0] if unknown else args.kernel!r}: choose from {', '.join(KERNELS)}")
    args.dtype = parse_dtypes(args.dtype)
    args.length = parse_length(args.length)
    args.heads, args.head_dim = (parse_sizes(getattr(args, name), name.replace("_", " "))[0] for name in ("heads", "head_dim"))
    if args.head_dim > triton_plan.MAX_HEAD_DIM:
        raise UsageError(f"bad head dim {args.head_dim}: at most {triton_plan.MAX_HEAD_DIM}")
    return args


if __name__ == "__main__":
    sys.exit(main())
