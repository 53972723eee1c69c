#!/usr/bin/env bash
# Every check that only a GPU can make, for the rare session that is lent one. Each part fits one device
# call (at most 10 minutes: its step limits add up to 9 min 30 s at most) and writes at most 8 files, all
# directly under $OUT (the device tool's limits).
#
#   bash benchmarks/gpu_session.sh 1   # tests/gpu but Triton's and torch.compile's; table 3 (gate scenarios/gpu-targets.toml)
#   bash benchmarks/gpu_session.sh 2   # the full default sweep, timed (issue 2: < 3 min on an H100);
#                                      # accounting vs allocator per cell
#   bash benchmarks/gpu_session.sh 3   # every seed impl at 64k: time, counts, achieved GB/s and
#                                      # TFLOP/s, and the top CUDA kernels: where to work next;
#                                      # Combiner-Mixture's plans timed against each other;
#                                      # Combiner with backend=compile, checked, then timed at 64k
#   bash benchmarks/gpu_session.sh 4   # the Triton backends: their GPU tests, then cosFormer's chunk lengths
#                                      # and Nyströmformer's kernels against the eager plans and sdpa-flash at
#                                      # 8k and 64k (bidirectional: Nyström has no causal form), and Combiner-
#                                      # Fixed's, -Axial's and -Mixture's fused parts against their eager plans at 64k,
#                                      # top kernels
#
# The device image has torch but not dash or plotly, and nothing can be installed there: attnprof runs
# from this checkout through PYTHONPATH (sweep, gate, fit and show need neither). Each step has its own
# time limit, so one slow step cannot cost the results of the others; a step past its limit gets SIGINT,
# which the sweep answers by saving what it measured and closing its database (no -wal file left behind),
# and SIGKILL 15 s later. Exit status: 0 when every step passed, 1 when one failed, 2 without CUDA.
set -u
cd "$(dirname "$0")/.." || exit 2
part=${1:-1}
OUT=${OUT:-/tmp/attnprof-gpu-out}
mkdir -p "$OUT"
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1
PY=${PYTHON:-python3}
status=0

step() {  # step NAME LIMIT_S COMMAND...: the command's output to $OUT/NAME.log, its tail and status here
    local name=$1 limit=$2 started rc
    shift 2
    echo "== $name (limit ${limit} s): $*"
    started=$(date +%s)
    timeout -k 15 -s INT "$limit" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    echo "   exit $rc after $(($(date +%s) - started)) s$([ $rc = 124 ] && echo ' (time limit)')"
    tail -n "${TAIL:-30}" "$OUT/$name.log"
    [ $rc = 0 ] || status=1
    return $rc
}

case $part in
1 | 2 | 3 | 4) ;;
*) echo "gpu_session: unknown part '$part'; choose 1, 2, 3 or 4" >&2 && exit 2 ;;
esac

ENV_LIMIT=30  # the environment check; then the part's steps
timeout -k 5 "$ENV_LIMIT" "$PY" -c "
import torch, attnprof
print('torch', torch.__version__, 'cuda', torch.version.cuda)
print(torch.cuda.get_device_name() if torch.cuda.is_available() else 'NO CUDA')
raise SystemExit(0 if torch.cuda.is_available() else 2)" >"$OUT/env.log" 2>&1
case $? in
0) nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv >>"$OUT/env.log" 2>&1; cat "$OUT/env.log" ;;
2) echo "gpu_session: no CUDA device here; nothing to check" >&2 && exit 2 ;;
*) echo "gpu_session: the environment check failed (see $OUT/env.log)" >&2 && exit 1 ;;
esac

case $part in
1)
    # the Triton backends' tests are part 4's (the sweep checks every impl against its reference before timing it)
    step gpu-tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/gpu -k "not compiled and not triton"
    step table3 360 "$PY" -m attnprof gate scenarios/gpu-targets.toml --db "$OUT/table3.db"
    ;;
2)
    step sweep 240 bash -c "time '$PY' -m attnprof sweep --lengths 1k..64k --impl all --db '$OUT/sweep.db'"
    TAIL=100 step memory 270 "$PY" benchmarks/memory_vs_accounting.py --db "$OUT/memory.db" --lengths 4k,16k
    ;;
3)
    TAIL=20 step kernels-64k 190 "$PY" benchmarks/kernel_profile.py --length 64k --kernels 12
    # Mixture's GPU plan was chosen by counts on meta: merged part softmaxes and the blocked scan, timed against the others
    step mixture-plans 40 "$PY" benchmarks/mixture_plans.py --length 64k
    # Combiner through torch.compile (the option backend=compile): right first, then how fast. Mixture compiles as one
    # graph (on the CPU: 40-70 s a shape); the limits leave room for compiling (the 8k profile gave up its step for it).
    step compiled-check 110 "$PY" -m pytest -q -p no:cacheprovider tests/gpu -k compiled
    TAIL=20 step kernels-compiled 155 "$PY" benchmarks/kernel_profile.py --length 64k --kernels 8 \
        --impl sdpa-flash,combiner-mixture:backend=compile,combiner-fixed:backend=compile
    ;;
4)
    # backend=triton was checked on the CPU through Triton's interpreter only (and compiled for sm_90 there, by
    # triton_resources.py); its block shapes and warps are guesses
    step triton-tests 150 "$PY" -m pytest -q -p no:cacheprovider tests/gpu -k triton
    TRITON="cosformer:backend=triton,chunk_size=32,cosformer:backend=triton,cosformer:backend=triton,chunk_size=128"
    TAIL=20 step triton-8k 120 "$PY" benchmarks/kernel_profile.py --length 8k --kernels 6 --impl "sdpa-flash,cosformer,$TRITON"
    NYSTROM="sdpa-flash,nystromformer,nystromformer:backend=triton"
    TAIL=20 step nystrom-triton 60 "$PY" benchmarks/kernel_profile.py --length 8k --causal no --kernels 6 --impl "$NYSTROM"
    TAIL=20 step triton-64k 150 "$PY" benchmarks/kernel_profile.py --length 64k --kernels 6 \
        --impl "sdpa-flash,cosformer,$TRITON,nystromformer,nystromformer:backend=triton,combiner-fixed,combiner-fixed:backend=triton,combiner-axial,combiner-axial:backend=triton,combiner-mixture,combiner-mixture:backend=triton"
    ;;
esac
exit $status
