"""Combiner-Mixture's device plan (blocked running max, each logit part's own softmax merged by log-normalisers):
counted on `meta`, where it stands in for a GPU (kernel launches, bytes written and peaks at N = 65536), and run
on the CPU with half inputs and large logits. Its values against the oracle: test_combiner.py
(test_mixture_on_the_device_plan_matches_the_oracle)."""

from __future__ import annotations

import pytest
import torch

from attnprof import impls
from attnprof.accounting import account_call, op_tally
from attnprof.impls.base import meta_stands_for
from attnprof.impls.combiner import combiner_attention
from attnprof.impls.combiner.mixture import separate_softmaxes
from attnprof.impls.combiner.scan import default_method
from attnprof.inputs import make_call, make_inputs
from attnprof.spec import Case

GiB = 2**30


def meta_call(causal: bool, mode: str = "fwd", n: int = 65536):
    impl = impls.get("combiner-mixture")
    case = Case(impl=impl.name, seq_len=n, heads=16, head_dim=64, dtype="bfloat16", causal=causal, mode=mode, device="meta")
    return make_call(impl.bind(case), make_inputs(case, device="meta"))


def test_meta_takes_the_plan_of_the_device_it_stands_for():
    for device, plan in (("cuda", ("blocked", True)), ("cpu", ("steps", False))):
        with meta_stands_for(device):
            assert (default_method("meta"), separate_softmaxes("meta")) == plan
    assert (default_method("cpu"), separate_softmaxes("cpu")) == ("steps", False)


@pytest.mark.parametrize("causal, max_ops, max_gb", [(False, 210, 37), (True, 280, 31)], ids=["bidir", "causal"])
def test_device_plan_launches_few_kernels_and_writes_little(causal, max_ops, max_gb):
    """At N = 65536, B = 1, H = 16, bf16, forward. When written: 185 ops and 35.1 GB written bidirectional, 257 and
    29.6 GB causal (bytes read and written, counted per op: 85 and 72 GB). Before the blocked scan, the masks
    filled only where they drop and the merged softmaxes: 140 ops and 57.5 GB, 181 and 42.6 GB (132 and 99 GB
    read and written), which put causal Mixture at ~1.2 x sdpa-flash on an H100 by an estimate at ~3 TB/s."""
    with op_tally() as tally:
        meta_call(causal)()
    assert tally.ops <= max_ops
    assert tally.bytes_written <= max_gb * 1e9


@pytest.mark.parametrize("causal, fwd_gib, fwd_bwd_gib", [(False, 11, 26), (True, 6, 18.5)], ids=["bidir", "causal"])
def test_device_plan_peaks_stay_below_the_joint_plans(causal, fwd_gib, fwd_bwd_gib):
    """Each part's softmax is not in place, but each part's weights are gone before the other's logits are formed.
    When written: 10.8 / 25.8 GiB bidirectional, 5.8 / 18.0 GiB causal (forward / forward+backward); the joint plan
    with the cummax scan had 11.2 / 33.4 and 6.6 / 22.5 (the scan's int64 indices were kept for the backward)."""
    assert account_call(meta_call(causal)).peak_bytes <= fwd_gib * GiB
    assert account_call(meta_call(causal, "fwd_bwd")).peak_bytes <= fwd_bwd_gib * GiB


@pytest.fixture
def device_plan(monkeypatch):
    """The plan Mixture takes on a GPU, taken on the CPU: the blocked scan, the parts' softmaxes merged."""
    monkeypatch.setattr("attnprof.impls.combiner.scan.default_method", lambda device: "blocked")
    monkeypatch.setattr("attnprof.impls.combiner.mixture.separate_softmaxes", lambda device: True)


def rel_error(actual, expected) -> float:
    return float(torch.linalg.vector_norm(actual.float() - expected) / torch.linalg.vector_norm(expected))


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_device_plan_half_inputs_stay_finite_at_a_long_length(device_plan, causal, dtype):
    """When written: 4.0e-3 (bf16) and 5.0e-4 (fp16) from the fp32 output at N = 4000."""
    q, k, v = (torch.randn(1, 1, 4000, 16, generator=torch.Generator().manual_seed(6 + i)) for i in range(3))
    out = combiner_attention(*(x.to(dtype) for x in (q, k, v)), variant="mixture", causal=causal)
    assert out.dtype == dtype and torch.isfinite(out).all()
    assert rel_error(out, combiner_attention(q, k, v, variant="mixture", causal=causal)) < 2e-2


@pytest.mark.parametrize("causal", [False, True], ids=["bidir", "causal"])
def test_merged_softmaxes_agree_with_the_joint_one_for_large_logits(monkeypatch, causal):
    """Queries scaled by 30 (logits in the hundreds, rows dominated by one key): the parts' normalisers, merged,
    give the joint softmax's output (when written: 2e-6 apart in fp32)."""
    q, k, v = (torch.randn(1, 2, 1000, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    outputs = []
    for separate in (True, False):
        monkeypatch.setattr("attnprof.impls.combiner.mixture.separate_softmaxes", lambda device, s=separate: s)
        outputs.append(combiner_attention(q * 30, k, v, variant="mixture", causal=causal))
    assert torch.isfinite(outputs[0]).all() and rel_error(*outputs) < 1e-5
