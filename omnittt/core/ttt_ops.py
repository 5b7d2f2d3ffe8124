"""The TTT inner loop: causal TTT-MLP and TTT-Linear (Sun et al. 2024, arXiv 2407.04620, sections 2.4-2.7).

Per head (head dim f), the inner model g_W is a GELU(tanh) MLP f -> 4f -> f (TTT-MLP) or a linear map (TTT-Linear),
and the full inner function is F(x) = x + LN(g_W(x)) with a per-head LayerNorm (eps 1e-6, biased variance). It is
trained on the fly on the self-supervised loss

    l_j(W) = 0.5 * || LN(g_W(k_j)) - (v_j - k_j) ||^2

with mini-batch gradient descent: the sequence is cut into mini-batches of b tokens, every gradient of a mini-batch
is taken at its start state W_s, and token i of the mini-batch uses

    W_i = W_s - sum_{j <= i} eta[i, j] * dl_j/dW(W_s)          (eta[i, j] = token_eta[i] * lr_j)
    z_i = q_i + LN(g_{W_i}(q_i))

The last token's W_i is carried to the next mini-batch. Two forms compute this exactly:

* the dual form (`ttt_mlp`, `ttt_linear`) over full mini-batches, which never builds a per-token W_i: the gradient
  of a linear layer is X^T G, so q_i W_i = q_i W_s - sum_{j<=i} eta[i, j] (q_i . k_j) G_j is a causal
  "attention" product (eta * tril(Q K^T)) @ G. The inner gradients G are written out by hand (no autograd inside the
  loop), so the outer backward is first order and gradients reach every input through the whole scan;
* the primal form with an accumulated gradient (`ttt_mlp_partial`, `ttt_linear_partial`, `ttt_commit`) for a part
  of a mini-batch: decoding token by token, a tail shorter than b, or a chunk continuing an unfinished mini-batch.

Shapes: inputs `[B, nh, n_mb, b, f]` for the dual form and `[B, nh, r, f]` for the partial form; all inner state is
kept in the dtype of the initial W1 (float32 in the model), inputs are cast to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from functools import partial
from typing import Literal

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.autograd.function import once_differentiable
from torch.utils.checkpoint import checkpoint

LN_EPS = 1e-6
SQRT_2_OVER_PI = math.sqrt(2 / math.pi)
GELU_A = 0.044715
MLP_KEYS = ("W1", "b1", "W2", "b2")
LINEAR_KEYS = ("W1", "b1")

Params = dict[str, Tensor]


# --- the inner model and its hand-written gradient ----------------------------------------------------------------


def _gelu(x: Tensor) -> Tensor:
    return F.gelu(x, approximate="tanh")


def _tanh_u(x: Tensor) -> tuple[Tensor, Tensor]:
    """tanh(u) and u' for the tanh GELU's u = sqrt(2/pi) (x + 0.044715 x^3)."""
    x2 = x * x
    t = torch.tanh(x * (SQRT_2_OVER_PI + SQRT_2_OVER_PI * GELU_A * x2))
    return t, SQRT_2_OVER_PI + 3 * SQRT_2_OVER_PI * GELU_A * x2


class _GeluWithGrad(torch.autograd.Function):
    """(gelu(x), gelu'(x)) of the tanh GELU, t = tanh u, with exact constants (the reference's truncated 0.79788456
    costs ~1e-11 in float64):
        gelu(x)   = 0.5 x (1 + t)
        gelu'(x)  = 0.5 (1 + t) + 0.5 x (1 - t^2) u'
        gelu''(x) = (1 - t^2) (u' - x t u'^2 + 3 sqrt(2/pi) 0.044715 x^2)      (for the outer backward)
    A Function of its own so that backward keeps only x, not the ~8 intermediates of [b, 4f] autograd would keep."""

    @staticmethod
    def forward(ctx, x: Tensor) -> tuple[Tensor, Tensor]:
        ctx.save_for_backward(x)
        t, du = _tanh_u(x)
        half = 0.5 + 0.5 * t
        return x * half, half + 0.5 * x * (1 - t * t) * du

    @staticmethod
    @once_differentiable
    def backward(ctx, grad_gelu: Tensor, grad_dgelu: Tensor) -> Tensor:
        (x,) = ctx.saved_tensors
        t, du = _tanh_u(x)
        sech2 = 1 - t * t
        dgelu = 0.5 + 0.5 * t + 0.5 * x * sech2 * du
        d2gelu = sech2 * (du - x * t * du * du + 3 * SQRT_2_OVER_PI * GELU_A * x * x)
        return grad_gelu * dgelu + grad_dgelu * d2gelu


def _ln_l2_grad(z: Tensor, target: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    """dl/dz of l = 0.5 * ||weight * LN(z) + bias - target||^2, LN over the last dim (biased variance)."""
    z = z - z.mean(-1, keepdim=True)  # (torch.var_mean is ~3x slower than these two reductions on CPU)
    rstd = (z.square().mean(-1, keepdim=True) + LN_EPS).rsqrt()
    zhat = z * rstd
    g = weight * torch.addcmul(bias - target, weight, zhat)  # dl/dzhat
    # through the normalisation: remove the mean and the zhat direction, then undo the scale
    return (g - g.mean(-1, keepdim=True) - zhat * (g * zhat).mean(-1, keepdim=True)) * rstd


def _layer_norm(z: Tensor, weight: Tensor, bias: Tensor) -> Tensor:
    return torch.addcmul(bias, weight, F.layer_norm(z, z.shape[-1:], eps=LN_EPS))


def _descend(W: Tensor, b: Tensor, X: Tensor, G: Tensor, eta_last: Tensor) -> tuple[Tensor, Tensor]:
    """One layer's carried state: W - X^T (eta_last * G), b - sum_j eta_last_j G_j (the last token's row of eta)."""
    G = G * eta_last
    return torch.baddbmm(W, X.mT, G, alpha=-1), b - G.sum(-2, keepdim=True)


# --- dual form over full mini-batches -----------------------------------------------------------------------------


def ttt_mlp(
    XK: Tensor,
    XQ: Tensor,
    XV: Tensor,
    eta: Tensor,
    ttt_norm_weight: Tensor,
    ttt_norm_bias: Tensor,
    W1_init: Tensor,
    b1_init: Tensor,
    W2_init: Tensor,
    b2_init: Tensor,
    checkpoint_group_size: int = 0,
) -> tuple[Params, Tensor]:
    """Causal TTT-MLP over full mini-batches (dual form).

    XK, XQ, XV `[B, nh, n_mb, b, f]`; eta `[B, nh, n_mb, b, b]` (only j <= i is used); norm params `[nh, f]`;
    W1 `[B, nh, f, 4f]`, b1 `[B, nh, 1, 4f]`, W2 `[B, nh, 4f, f]`, b2 `[B, nh, 1, f]`.
    `checkpoint_group_size` g > 0 keeps only the state every g mini-batches for backward and recomputes the rest.
    Returns ({W1_states, b1_states, W2_states, b2_states} after the last mini-batch, z `[B, nh, n_mb, b, f]`).
    """
    state = (W1_init, b1_init, W2_init, b2_init)
    return _dual_form(_mlp_step, XK, XQ, XV, eta, ttt_norm_weight, ttt_norm_bias, state, checkpoint_group_size)


def ttt_linear(
    XK: Tensor,
    XQ: Tensor,
    XV: Tensor,
    eta: Tensor,
    ttt_norm_weight: Tensor,
    ttt_norm_bias: Tensor,
    W1_init: Tensor,
    b1_init: Tensor,
    checkpoint_group_size: int = 0,
) -> tuple[Params, Tensor]:
    """Causal TTT-Linear over full mini-batches (dual form); as `ttt_mlp` with W1 `[B, nh, f, f]`, b1 `[B, nh, 1, f]`
    and final_params keys `W1_states, b1_states`."""
    state = (W1_init, b1_init)
    return _dual_form(_linear_step, XK, XQ, XV, eta, ttt_norm_weight, ttt_norm_bias, state, checkpoint_group_size)


def _mlp_step(ln_w: Tensor, ln_b: Tensor, state: tuple[Tensor, ...], XK: Tensor, XQ: Tensor, XV: Tensor, M1: Tensor,
              eta: Tensor, eta_last: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
    """One mini-batch of TTT-MLP, `[B*nh, b, ...]` tensors; returns the carried state and LN(g_{W_i}(q_i)) before
    the LN affine."""
    W1, b1, W2, b2 = state
    # keys at W_s and their loss gradients dl/dZ2, dl/dZ1
    Z1 = torch.baddbmm(b1, XK, W1)
    X2, dX2 = _GeluWithGrad.apply(Z1)
    G2 = _ln_l2_grad(torch.baddbmm(b2, X2, W2), XV - XK, ln_w, ln_b)
    G1 = (G2 @ W2.mT) * dX2
    # queries through W_i without forming it: M = eta * (Xq X^T + 1) folds the weight and bias updates together;
    # layer 2 sees the query's own hidden activations, computed with W1_i
    X2q = _gelu(torch.baddbmm(torch.baddbmm(b1, XQ, W1), M1, G1, alpha=-1))
    M2 = torch.addcmul(eta, eta, X2q @ X2.mT)
    Z2q = torch.baddbmm(torch.baddbmm(b2, X2q, W2), M2, G2, alpha=-1)
    state = (*_descend(W1, b1, XK, G1, eta_last), *_descend(W2, b2, X2, G2, eta_last))
    return state, F.layer_norm(Z2q, Z2q.shape[-1:], eps=LN_EPS)


def _linear_step(ln_w: Tensor, ln_b: Tensor, state: tuple[Tensor, ...], XK: Tensor, XQ: Tensor, XV: Tensor,
                 M1: Tensor, eta: Tensor, eta_last: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
    """One mini-batch of TTT-Linear: the first layer of `_mlp_step` with the loss right after it."""
    W1, b1 = state
    G1 = _ln_l2_grad(torch.baddbmm(b1, XK, W1), XV - XK, ln_w, ln_b)
    Z1q = torch.baddbmm(torch.baddbmm(b1, XQ, W1), M1, G1, alpha=-1)
    return _descend(W1, b1, XK, G1, eta_last), F.layer_norm(Z1q, Z1q.shape[-1:], eps=LN_EPS)


def _dual_form(step: Callable, XK: Tensor, XQ: Tensor, XV: Tensor, eta: Tensor, ln_weight: Tensor, ln_bias: Tensor,
               state: tuple[Tensor, ...], checkpoint_group_size: int) -> tuple[Params, Tensor]:
    _check_dual_shapes(XK, XQ, XV, eta, ln_weight, state)
    B, nh = XK.shape[:2]
    dtype = state[0].dtype
    # [B*nh, n_mb, ...] views; the scan walks dim 1 and bmm takes the strided per-step slices without copies
    XK, XQ, XV, eta = (x.to(dtype).flatten(0, 1) for x in (XK, XQ, XV, eta))
    eta = eta.tril()
    M1 = (XQ @ XK.mT).add_(1).mul_(eta)  # eta * (XQ XK^T + 1) for all mini-batches at once, causal through tril
    inputs = (XK, XQ, XV, M1, eta, eta[..., -1, :, None])  # the last token's row of eta: its W is carried
    ln_w, ln_b = (p.to(dtype).repeat(B, 1)[:, None] for p in (ln_weight, ln_bias))
    state = tuple(p.to(dtype).flatten(0, 1) for p in state)
    state, zhat = _scan(partial(step, ln_w, ln_b), state, inputs, checkpoint_group_size)
    XQW = torch.addcmul(XQ, ln_w[:, None], zhat).add_(ln_b[:, None])  # the LN affine and residual, all tokens at once
    final = {f"{name}_states": p.unflatten(0, (B, nh)) for name, p in zip(MLP_KEYS[: len(state)], state, strict=True)}
    return final, XQW.unflatten(0, (B, nh))


def _scan(step: Callable, state: tuple[Tensor, ...], inputs: tuple[Tensor, ...],
          group_size: int) -> tuple[tuple[Tensor, ...], Tensor]:
    """Runs `step` over dim 1 of `inputs`, in groups of `group_size` mini-batches that are recomputed in backward
    (0 = keep everything). Inputs are unbound and outputs stacked, never indexed or written per step: per-step
    indexing makes autograd materialise a full-size gradient per mini-batch, a backward quadratic in length."""
    n_mb = inputs[0].shape[1]
    if n_mb == 0:  # nothing to learn from: the state passes through
        return state, inputs[0].new_zeros(inputs[0].shape)
    remat = group_size > 0 and torch.is_grad_enabled()
    chunks = zip(*(x.split(min(group_size, n_mb) if remat else n_mb, dim=1) for x in inputs), strict=True)
    n_state = len(state)

    def run_group(*tensors: Tensor) -> tuple[tuple[Tensor, ...], Tensor]:
        # state and inputs as flat tensor arguments: checkpoint saves (and counts) only top-level tensors
        state, outs = tensors[:n_state], []
        for xs in zip(*(x.unbind(1) for x in tensors[n_state:]), strict=True):
            state, out = step(state, *xs)
            outs.append(out)
        return state, torch.stack(outs, dim=1)

    outs = []
    for chunk in chunks:
        if remat:
            state, out = checkpoint(run_group, *state, *chunk, use_reentrant=False)
        else:
            state, out = run_group(*state, *chunk)
        outs.append(out)
    return state, outs[0] if len(outs) == 1 else torch.cat(outs, dim=1)


def _check_dual_shapes(XK: Tensor, XQ: Tensor, XV: Tensor, eta: Tensor, ln_weight: Tensor,
                       state: tuple[Tensor, ...]) -> None:
    if XK.dim() != 5 or XQ.shape != XK.shape or XV.shape != XK.shape:
        raise ValueError(f"XK, XQ, XV must share one [B, nh, n_mb, b, f] shape, got {XK.shape}, {XQ.shape}, "
                         f"{XV.shape}")
    B, nh, n_mb, b, f = XK.shape
    if eta.shape != (B, nh, n_mb, b, b):
        raise ValueError(f"eta must be [B, nh, n_mb, b, b] = {[B, nh, n_mb, b, b]}, got {list(eta.shape)}")
    if ln_weight.shape != (nh, f):
        raise ValueError(f"ttt_norm_weight must be [nh, f] = {[nh, f]}, got {list(ln_weight.shape)}")
    width = state[0].shape[-1]
    expected = [(B, nh, f, width), (B, nh, 1, width), (B, nh, width, f), (B, nh, 1, f)][: len(state)]
    if [tuple(p.shape) for p in state] != expected:
        raise ValueError(f"initial state shapes must be {expected}, got {[tuple(p.shape) for p in state]}")


# --- primal form for part of a mini-batch -------------------------------------------------------------------------


def ttt_mlp_partial(
    XK: Tensor,
    XQ: Tensor,
    XV: Tensor,
    lr: Tensor,
    token_eta: Tensor,
    ttt_norm_weight: Tensor,
    ttt_norm_bias: Tensor,
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, Params]:
    """r tokens of an unfinished TTT-MLP mini-batch whose start state is `params` (W1, b1, W2, b2).

    XK, XQ, XV `[B, nh, r, f]`; lr `[B, nh, r]` (lr_j, 0 for padding); token_eta `[B, 1, r]` or broadcastable to
    `[B, nh, r]` (token_eta of each token's offset inside its mini-batch); grads = sum over the mini-batch's earlier
    tokens of lr_j dl_j/dW(W_s) (None = none). Token i uses W_i = W_s - token_eta[i] * (grads + sum_{j<=i in chunk}
    lr_j dl_j/dW(W_s)). Returns (z `[B, nh, r, f]`, grads + this chunk's sum).
    """
    return _partial_form("mlp", XK, XQ, XV, lr, token_eta, ttt_norm_weight, ttt_norm_bias, params, grads)


def ttt_linear_partial(
    XK: Tensor,
    XQ: Tensor,
    XV: Tensor,
    lr: Tensor,
    token_eta: Tensor,
    ttt_norm_weight: Tensor,
    ttt_norm_bias: Tensor,
    params: Mapping[str, Tensor],
    grads: Mapping[str, Tensor] | None = None,
) -> tuple[Tensor, Params]:
    """`ttt_mlp_partial` for TTT-Linear (params W1 `[B, nh, f, f]`, b1 `[B, nh, 1, f]`)."""
    return _partial_form("linear", XK, XQ, XV, lr, token_eta, ttt_norm_weight, ttt_norm_bias, params, grads)


def ttt_commit(params: Mapping[str, Tensor], grads: Mapping[str, Tensor] | None,
               token_eta_last: Tensor | float) -> Params:
    """Closes a mini-batch: params - token_eta_last * grads per key (token_eta_last: a number, `[B]` or `[B, nh]`,
    the token_eta of the mini-batch's last real token)."""
    if grads is None:
        return dict(params)
    out = {}
    for key, W in params.items():
        te = torch.as_tensor(token_eta_last, dtype=W.dtype, device=W.device)
        out[key] = W - te.reshape(te.shape + (1,) * (W.dim() - te.dim())) * grads[key]
    return out


def inner_loss(params: Mapping[str, Tensor], XK: Tensor, XV: Tensor, ttt_norm_weight: Tensor, ttt_norm_bias: Tensor,
               kind: Literal["mlp", "linear"] = "mlp", weights: Tensor | None = None) -> Tensor:
    """Mean per-token inner loss 0.5 ||LN(g_W(k)) - (v - k)||^2 `[B, nh]` over the tokens whose weight
    (`[B, nh, r]` or `[B, 1, r]`, e.g. lr) is > 0; 0 for a row without such tokens."""
    W = _select(params, kind)
    XK, XV = XK.to(W["W1"].dtype), XV.to(W["W1"].dtype)
    w, b = (p.to(XK.dtype)[:, None] for p in (ttt_norm_weight, ttt_norm_bias))
    Z = XK @ W["W1"] + W["b1"]
    if kind == "mlp":
        Z = _gelu(Z) @ W["W2"] + W["b2"]
    per_token = 0.5 * (_layer_norm(Z, w, b) - (XV - XK)).square().sum(-1)
    if weights is None:
        return per_token.mean(-1)
    mask = (weights > 0).to(per_token.dtype).expand_as(per_token)
    return (per_token * mask).sum(-1) / mask.sum(-1).clamp_min(1)


def _partial_form(kind: str, XK: Tensor, XQ: Tensor, XV: Tensor, lr: Tensor, token_eta: Tensor, ln_weight: Tensor,
                  ln_bias: Tensor, params: Mapping[str, Tensor], grads: Mapping[str, Tensor] | None,
                  ) -> tuple[Tensor, Params]:
    W = _select(params, kind)
    dtype = W["W1"].dtype
    XK, XQ, XV, lr = (x.to(dtype) for x in (XK, XQ, XV, lr))
    te = torch.as_tensor(token_eta, dtype=dtype, device=XK.device)[..., None]  # [.., r, 1]
    eta = (te * lr[..., None, :]).tril()  # eta[i, j] = token_eta[i] * lr_j, j <= i
    ln_w, ln_b = (p.to(dtype)[:, None] for p in (ln_weight, ln_bias))
    lr = lr[..., None]

    def queries(layer: int, X: Tensor, Xq: Tensor, G: Tensor) -> Tensor:
        """Xq W_i + b_i of one layer, W_i = W_s - token_eta_i (grads + sum_{j<=i} lr_j X_j^T G_j): the dual form's
        causal product plus the pending gradient of the mini-batch's earlier tokens."""
        w, b = f"W{layer}", f"b{layer}"
        Z = Xq @ W[w] + W[b] - (eta * (Xq @ X.mT + 1)) @ G
        return Z if grads is None else Z - te * (Xq @ grads[w] + grads[b])

    def accumulate(layer: int, X: Tensor, G: Tensor) -> Params:
        G = lr * G
        new = {f"W{layer}": X.mT @ G, f"b{layer}": G.sum(-2, keepdim=True)}
        return new if grads is None else {k: grads[k] + v for k, v in new.items()}

    target = XV - XK
    Z1 = XK @ W["W1"] + W["b1"]
    if kind == "linear":
        G1 = _ln_l2_grad(Z1, target, ln_w, ln_b)
        return XQ + _layer_norm(queries(1, XK, XQ, G1), ln_w, ln_b), accumulate(1, XK, G1)
    X2, dX2 = _GeluWithGrad.apply(Z1)
    G2 = _ln_l2_grad(X2 @ W["W2"] + W["b2"], target, ln_w, ln_b)
    G1 = (G2 @ W["W2"].mT) * dX2
    X2q = _gelu(queries(1, XK, XQ, G1))
    Zq = queries(2, X2, X2q, G2)
    return XQ + _layer_norm(Zq, ln_w, ln_b), {**accumulate(1, XK, G1), **accumulate(2, X2, G2)}


def _select(params: Mapping[str, Tensor], kind: str) -> Params:
    """The state tensors of one inner model kind."""
    keys = MLP_KEYS if kind == "mlp" else LINEAR_KEYS if kind == "linear" else None
    if keys is None:
        raise ValueError(f"kind must be 'mlp' or 'linear', got {kind!r}")
    return {k: params[k] for k in keys}
