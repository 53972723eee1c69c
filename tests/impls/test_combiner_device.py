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
from attnprof.impls.combiner.mixture import SoftmaxWithNormaliser, plan
from attnprof.impls.combiner.scan import default_method
from attnprof.inputs import make_call, make_inputs
from attnprof.spec import Case

GiB = 2**30


def meta_call(causal: bool, mode: str = "fwd", n: int = 65536):
    impl = impls.get("combiner-mixture")
    case = Case(impl=impl.name, seq_len=n, heads=16, head_dim=64, dtype="bfloat16", causal=causal, mode=mode, device="meta")
    return make_call(impl.bind(case), make_inputs(case, device="meta"))


def test_meta_takes_the_plan_of_the_device_it_stands_for():
    for device, expected in (("cuda", ("blocked", "merged")), ("cpu", ("steps", "flash"))):
        with meta_stands_for(device):
            assert (default_method("meta"), plan("meta")) == expected
    assert (default_method("cpu"), plan("cpu")) == ("steps", "flash")


@pytest.mark.parametrize(
    "causal, mode, max_ops, max_written_gb, max_moved_gb",
    [(False, "fwd", 210, 37, 90), (True, "fwd", 280, 31, 76), (False, "fwd_bwd", 480, 200, 450), (True, "fwd_bwd", 650, 195, 425)],
    ids=["bidir-fwd", "causal-fwd", "bidir-fwd_bwd", "causal-fwd_bwd"],
)
def test_device_plan_launches_few_kernels_and_moves_few_bytes(causal, mode, max_ops, max_written_gb, max_moved_gb):
    """At N = 65536, B = 1, H = 16, bf16; moved = read + written, op by op. When written (ops, GB written, GB moved):
    bidirectional 185, 35.1, 85.0 forward and 449, 188.1, 439.8 forward + backward; causal 257, 29.6, 72.2 and 620,
    182.0, 414.3. At the start of the session (cummax scan, dense masks, joint softmax): 140, 57.5, 132.2 and 376,
    207.3, 475.6; 181, 42.6, 99.4 and 493, 209.5, 467.2, which put causal Mixture at ~1.2 x sdpa-flash on an H100
    by an estimate at ~3 TB/s. With autograd through the part normalisers' max and gather (before
    SoftmaxWithNormaliser), forward + backward moved 497.8 and 451.8 GB."""
    with op_tally() as tally:
        meta_call(causal, mode)()
    assert tally.ops <= max_ops
    assert tally.bytes_written <= max_written_gb * 1e9
    assert tally.bytes_written + tally.bytes_read <= max_moved_gb * 1e9


@pytest.mark.parametrize("causal, fwd_gib, fwd_bwd_gib", [(False, 11, 24), (True, 6, 18.5)], ids=["bidir", "causal"])
def test_device_plan_peaks_at_64k(causal, fwd_gib, fwd_bwd_gib):
    """Each part's softmax is not in place, but its weights are gone before the other part's logits are formed.
    When written: 10.8 / 23.4 GiB bidirectional, 5.8 / 17.9 GiB causal (forward / forward + backward). The joint
    softmax with the same scan: 11.0 / 27.6 and 5.6 / 17.8; with the cummax scan (whose int64 indices the backward
    kept): 11.2 / 33.4 and 6.6 / 22.5."""
    assert account_call(meta_call(causal)).peak_bytes <= fwd_gib * GiB
    assert account_call(meta_call(causal, "fwd_bwd")).peak_bytes <= fwd_bwd_gib * GiB


def test_softmax_with_normaliser_has_exact_gradients():
    """Its hand-written backward against finite differences (float64), masked entries included."""
    x = torch.randn(3, 4, 7, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    x[0, 0, :3] = float("-inf")  # dropped keys, as the masks leave them
    x.requires_grad_()
    assert torch.autograd.gradcheck(SoftmaxWithNormaliser.apply, (x,))
    weights, lse = SoftmaxWithNormaliser.apply(x)
    torch.testing.assert_close(weights, torch.softmax(x, -1), rtol=0, atol=1e-15)
    torch.testing.assert_close(lse, torch.logsumexp(x, -1, keepdim=True), rtol=0, atol=1e-14)


@pytest.fixture
def device_plan(monkeypatch):
    """The plan Mixture takes on a GPU, taken on the CPU: the blocked scan, the parts' softmaxes merged."""
    monkeypatch.setattr("attnprof.impls.combiner.scan.default_method", lambda device: "blocked")
    monkeypatch.setattr("attnprof.impls.combiner.mixture.plan", lambda device: "merged")


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
def test_the_merged_plans_agree_for_large_logits(monkeypatch, causal):
    """Queries scaled by 30 (logits in the hundreds, rows dominated by one key): the eager parts' normalisers,
    merged, give the CPU flash plan's output (when written against the joint softmax since replaced by the flash
    plan: 2e-6 apart in fp32)."""
    q, k, v = (torch.randn(1, 2, 1000, 16, generator=torch.Generator().manual_seed(i)) for i in range(3))
    outputs = []
    for name in ("merged", "flash"):
        monkeypatch.setattr("attnprof.impls.combiner.mixture.plan", lambda device, name=name: name)
        outputs.append(combiner_attention(q * 30, k, v, variant="mixture", causal=causal))
    assert torch.isfinite(outputs[0]).all() and rel_error(*outputs) < 1e-5
