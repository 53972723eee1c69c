"""The causal cosFormer's CPU backward for many heads: causal.py's two sweeps, one chunk of every head a step.

The same sums as causal._causal_query_grads and _causal_key_grads (up to rounding: the rotation's gradient is folded
into the products' results by two multiply-adds instead of a temporary and a sum), taken the way sequential.py takes the
forward: the sums of the chunks already swept, [2d, Dv + 1] a head, are read by the step and then advanced in place,
and each step writes into one set of buffers allocated once a call (both sweeps, and a last chunk of N mod C, use
it). Where sequential_plan(backward=True) holds (B H C >= 2^10 rows on the CPU) the backward takes this instead of the
G chunks a step; it reads what either forward saves (out and the denominators). Measured on the CPU: see
sequential_backward and common.SEQUENTIAL_BACKWARD_ROWS.
"""

from __future__ import annotations

import torch

from attnprof.impls.cosformer.common import causal_reweight, load_relu, position_rotation, relu_grad
from attnprof.impls.cosformer.step_workspace import StepWorkspace, feature_shapes


def sequential_backward(q, k, v, out, denominator, grad_out, eps: float, chunk: int):
    """(dq, dk, dv) of the causal cosFormer from the forward's output and denominators (B, H, N, 1) in the compute
    dtype: dq sweeping forwards (a chunk's queries read the keys before it), dk and dv sweeping backwards (a chunk's
    keys feed every later query). 3-d operands (B H, C, X), u = [v, 1] (the numerator's and the denominator's
    gradients in one product) and g = d loss / d (numerator | denominator) rows (common.row_grads).
    Measured (2 cores, N = 8192, B = 1, H = 16, D = 64, fp32, forward + backward through cosformer_attention, 7
    interleaved calls, retained heap, medians): 302-323 -> 206-229 ms over three rounds against the G-chunk backward
    (relu's gradient by masked_fill_ instead of threshold_backward: 289 ms); gradients within 5e-8 (relative) of it.
    dv's products leave out the ones column (its gradient is unused), so its FLOPs differ (cosformer_flops)."""
    dtype, (batch, heads, n, d), dv = denominator.dtype, q.shape, v.shape[-1]
    rotation = position_rotation(n, n, dtype, q.device)  # (N, 2, 1): [sin a, cos a]
    reweight = causal_reweight(min(chunk, n), n, dtype, q.device)  # (C, C)
    grad_q, grad_k, grad_v = torch.empty_like(q), torch.empty_like(k), torch.empty_like(v)  # (B, H, N, D | Dv)
    spans = [slice(start, min(start + chunk, n)) for start in range(0, n, chunk)]
    sums = q.new_zeros((batch * heads, 2 * d, dv + 1), dtype=dtype)  # (BH, 2D, Dv+1): sum phi(k)^T u of the chunks before
    sums_t = sums.transpose(-2, -1)  # (BH, Dv+1, 2D)

    full = _BackwardWorkspace(batch, heads, min(chunk, n), d, dv, dtype, q.device, reweight)  # both sweeps' steps

    def sweep(order, keys: bool):
        """Each step of `order`, its pieces loaded and d loss / d relu(x) of its queries (keys: of its keys) in grad_f."""
        for rows in order:
            work = full.sized(rows.stop - rows.start)  # a last chunk of N mod C: views of the same buffers
            rotation_rows = rotation[rows]  # (C, 2, 1)
            work.load(q, k, v, out, denominator, grad_out, rows, rotation_rows, eps, with_queries=keys)
            work.relu_feature_grads(sums_t, rotation_rows, keys)
            yield rows, work

    for rows, work in sweep(spans, keys=False):
        work.store(q, grad_q, rows)
        torch.baddbmm(sums, work.phi_k_t, work.u, out=sums)
    sums.zero_()  # now: sum phi(q)^T g of the chunks after
    for rows, work in sweep(reversed(spans), keys=True):
        work.store(k, grad_k, rows)
        torch.bmm(work.q_f, work.k_f_t, out=work.weights).mul_(work.reweight)  # (BH, C, C): W
        torch.bmm(work.weights_t, work.g_values, out=work.grad_v)  # (BH, C, Dv)
        torch.baddbmm(work.grad_v, work.phi_k, sums[..., :-1], out=work.grad_v)
        grad_v[..., rows, :].copy_(work.grad_v_heads)
        torch.baddbmm(sums, work.phi_q_t, work.g, out=sums)
    return grad_q, grad_k, grad_v


class _BackwardWorkspace(StepWorkspace):
    """The backward's step buffers, and the views its steps read them through."""

    def __init__(self, *args, full=None, **kwargs):
        super().__init__(*args, full=full, **kwargs)
        if full is None:
            self.u[..., -1] = 1  # a shorter step's u is a view of these rows: its ones are there already
        per_head, d = self.per_head, self.q_f.shape[-1]
        self.features = ((per_head(self.q_f), self.q_f.unsqueeze(-2), self.phi_q_parts),)  # relu(q) per head and as a column, phi(q)
        self.features += ((per_head(self.k_f), self.k_f.unsqueeze(-2), self.phi_k_parts),)
        self.phi_q, self.phi_k = self.phi_q_parts.flatten(-2), self.phi_k_parts.flatten(-2)  # (BH, C, 2D)
        self.phi_q_t, self.phi_k_t, self.k_f_t = self.phi_q.transpose(-2, -1), self.phi_k.transpose(-2, -1), self.k_f.transpose(-2, -1)
        self.u_t, self.u_values = self.u.transpose(-2, -1), per_head(self.u)[..., :-1]  # (BH, Dv+1, C), (B, H, C, Dv)
        self.g_values, g_heads = self.g[..., :-1], per_head(self.g)  # (BH, C, Dv); (B, H, C, Dv+1)
        self.g_values_heads, self.g_last_heads = g_heads[..., :-1], g_heads[..., -1:]  # (B, H, C, Dv), (B, H, C, 1)
        self.product_heads, self.grad_f_heads, self.grad_v_heads = per_head(self.product), per_head(self.grad_f), per_head(self.grad_v)
        self.weights_t = self.weights.transpose(-2, -1)  # (BH, C, C)
        self.grad_phi_sin, self.grad_phi_cos = self.grad_phi[..., :d], self.grad_phi[..., d:]  # (BH, C, D) each

    @staticmethod
    def shapes(d: int, dv: int) -> dict:
        return {
            **feature_shapes(d),
            "u": ("C", dv + 1),  # [v, 1]: (BH, C, Dv+1)
            "g": ("C", dv + 1),  # d loss / d (numerator | denominator): (BH, C, Dv+1)
            "product": ("C", dv),  # g's numerator part * out: (BH, C, Dv)
            "weights": ("C", "C"),  # (BH, C, C)
            "grad_f": ("C", d),  # (BH, C, D)
            "grad_phi": ("C", 2 * d),  # (BH, C, 2D)
            "grad_v": ("C", dv),  # (BH, C, Dv)
        }

    def load(self, q, k, v, out, denominator, grad_out, rows: slice, rotation, eps: float, with_queries: bool) -> None:
        """relu and phi of k (and of q, `with_queries`: the keys' sweep reads them), u = [v, 1] and g of the step's
        rows, cast to the compute dtype."""
        inputs, features = ((q, k), self.features) if with_queries else ((k,), self.features[1:])
        for x, (x_f_heads, column, phi) in zip(inputs, features, strict=True):
            load_relu(x[..., rows, :], x_f_heads)
            torch.mul(column, rotation, out=phi)  # (BH, C, 2, D)
        self.u_values.copy_(v[..., rows, :])
        self._load_row_grads(grad_out[..., rows, :], out[..., rows, :], denominator[..., rows, :], eps)

    def _load_row_grads(self, grad_out, out, denominator, eps: float) -> None:
        """g = [grad_out / clamp(den), -(grad_out . out) / clamp(den) [den >= eps]], as common.row_grads makes it."""
        clamped = denominator.clamp_min(eps)  # (B, H, C, 1)
        grad_out, out = grad_out.to(clamped.dtype), out.to(clamped.dtype)  # (B, H, C, Dv): copies for half inputs only
        torch.mul(grad_out, out, out=self.product_heads)
        torch.sum(self.product_heads, -1, keepdim=True, out=self.g_last_heads)
        self.g_last_heads.div_(clamped).mul_(denominator >= eps).neg_()  # clamp_min passes no gradient below eps
        torch.div(grad_out, clamped, out=self.g_values_heads)

    def relu_feature_grads(self, sums_t, rotation, keys: bool) -> None:
        """d loss / d relu(x) of the step's queries (keys: of its keys) into grad_f: through the intra-chunk weights, and
        through phi(x) = [relu(x) sin a, relu(x) cos a] from the sums of the chunks swept (sums_t (BH, Dv+1, 2D));
        rotation (C, 2, 1)."""
        torch.bmm(self.g, self.u_t, out=self.weights).mul_(self.reweight)  # (BH, C, C): d loss / d W
        torch.bmm(*((self.weights_t, self.q_f) if keys else (self.weights, self.k_f)), out=self.grad_f)  # (BH, C, D)
        torch.bmm(self.u if keys else self.g, sums_t, out=self.grad_phi)  # (BH, C, 2D)
        self.grad_f.addcmul_(self.grad_phi_sin, rotation[:, 0]).addcmul_(self.grad_phi_cos, rotation[:, 1])

    def store(self, x, grad_x, rows: slice) -> None:
        """relu's gradient (grad_f where x > 0, else 0) straight into grad_x's rows (common.relu_grad): masked_fill_
        and a copy took 121 us a step on the CPU (65k elements), this 9.6 us."""
        relu_grad(self.grad_f_heads, x[..., rows, :], into=grad_x[..., rows, :])
