"""What the Triton backends ask of the installed Triton before a case runs on CUDA."""


def test_a_triton_too_old_to_compile_the_kernels_is_a_refusal_on_cuda(monkeypatch):
    """triton 3.1 (torch 2.5), 3.2 (2.6) and 3.3 (2.7) failed to compile some of the kernels for an H100, aborting the
    worker: a case of backend=triton on CUDA is refused with the reason instead (found running the tests on those)."""
    from attnprof.impls import triton_support

    monkeypatch.setattr(triton_support, "triton_installed", lambda: True)
    monkeypatch.setattr(triton_support, "triton_version", lambda: (3, 1))
    (said,) = triton_support.case_problems("cosformer", "cuda:0")
    assert said == "cosformer backend=triton needs Triton 3.4 or later (torch 2.8+ brings one), not 3.1: older ones fail to compile it"
    assert triton_support.case_problems("cosformer", "meta") == []  # the accounting compiles nothing
    monkeypatch.setattr(triton_support, "triton_version", lambda: (3, 6))
    assert triton_support.case_problems("cosformer", "cuda") == []
