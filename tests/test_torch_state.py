"""torch's process-wide settings, put back after each case (torch_state.py)."""

import torch

from attnprof import torch_state
from attnprof.failures import is_prediction


def test_settings_an_impl_changed_are_put_back_and_named():
    kept = torch_state.snapshot()
    threads = torch.get_num_threads()
    try:
        torch.set_num_threads(1 if threads > 1 else 2)
        torch.set_grad_enabled(False)
        changed = torch_state.restore(kept)
        assert f"threads {threads} -> {1 if threads > 1 else 2}" in changed and "grad mode True -> False" in changed
        assert torch.get_num_threads() == threads and torch.is_grad_enabled() and torch_state.restore(kept) == []
    finally:
        torch.set_num_threads(threads)
        torch.set_grad_enabled(True)


def test_torchs_new_precision_api_is_put_back_without_raising():
    """An impl setting torch >= 2.9's matmul fp32_precision made the legacy getters raise, and the worker crashed after
    each of its cases."""
    matmul = torch.backends.cuda.matmul
    if not hasattr(matmul, "fp32_precision"):
        return  # an older torch: the legacy flag is the only one (covered above)
    kept = torch_state.snapshot()
    before = matmul.fp32_precision
    try:
        matmul.fp32_precision = "tf32"
        assert torch_state.restore(kept) == [f"cuda matmul fp32_precision {before} -> tf32"]
        assert matmul.fp32_precision == before and torch.get_float32_matmul_precision() == kept["float32 matmul precision"]
    finally:
        matmul.fp32_precision = before


def test_putting_one_setting_back_that_moves_another_blames_no_later_case():
    """set_float32_matmul_precision (restoring 'float32 matmul precision') sets cuda matmul fp32_precision to 'ieee'
    after that was put back to 'none': the next case, which changed nothing, was named as changing it."""
    kept = torch_state.snapshot()
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")  # a common line in an impl
        assert any(change.startswith("float32 matmul precision") for change in torch_state.restore(kept))
        assert torch_state.restore(kept) == []  # the next case: nothing to say
        assert torch_state.snapshot() == kept
    finally:
        torch.set_float32_matmul_precision(before)


def test_a_note_after_a_predicted_oom_keeps_it_a_prediction():
    """The settings note followed "; not run", and the guard's prediction read as a measured out-of-memory."""
    assert is_prediction("predicted peak 513.0 GiB exceeds 80% of available host memory (20 GiB); not run")
    assert is_prediction("predicted peak 513.0 GiB exceeds ...; not run; the impl changed torch's global settings (threads 2 -> 1)")
    assert not is_prediction("out of memory: CUDA out of memory; during the timing pass")
