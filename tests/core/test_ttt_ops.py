"""The TTT op against the formula: a primal implementation written here (autograd gradient descent per mini-batch,
every gradient at the mini-batch's start state W_s), a case computed scalar by scalar, causality, the direction of
the update, checkpointing, and the partial-mini-batch form that decoding and padding are built on."""

from __future__ import annotations

import math
import random

import pytest
import torch

from omnittt.core.ttt_ops import (
    inner_loss,
    ttt_commit,
    ttt_linear,
    ttt_linear_partial,
    ttt_mlp,
    ttt_mlp_partial,
)

KINDS = ("mlp", "linear")
OPS = {"mlp": ttt_mlp, "linear": ttt_linear}
PARTIAL = {"mlp": ttt_mlp_partial, "linear": ttt_linear_partial}
KEYS = {"mlp": ("W1", "b1", "W2", "b2"), "linear": ("W1", "b1")}


def rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return ((a - b).abs().max() / b.abs().max()).item()


# --- the reference: gradient descent on the inner loss, from the formula ---------------------------------------


def gelu_tanh(x):
    return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def layer_norm(z, w, b):
    mu = z.mean(-1, keepdim=True)
    var = ((z - mu) ** 2).mean(-1, keepdim=True)
    return w * (z - mu) / torch.sqrt(var + 1e-6) + b


def inner_model(W, x, kind):
    z = x @ W[0] + W[1]
    return gelu_tanh(z) @ W[2] + W[3] if kind == "mlp" else z


def primal(kind, XK, XQ, XV, eta, ln_w, ln_b, state):
    """z_i = q_i + LN(g_{W_i}(q_i)), W_i = W_s - grad_W sum_{j<=i} eta_ij l_j(W_s), one token at a time."""
    B, nh, n_mb, b, _ = XK.shape
    outs, finals = [], []
    for bi in range(B):
        for h in range(nh):
            W = [p[bi, h] for p in state]
            w, beta = ln_w[h], ln_b[h]
            chain = []
            for m in range(n_mb):
                k, q, v, e = XK[bi, h, m], XQ[bi, h, m], XV[bi, h, m], eta[bi, h, m]
                losses = [0.5 * ((layer_norm(inner_model(W, k[j], kind), w, beta) - (v[j] - k[j])) ** 2).sum()
                          for j in range(b)]
                for i in range(b):
                    total = sum(e[i, j] * losses[j] for j in range(i + 1))
                    grads = torch.autograd.grad(total, W, create_graph=True)
                    W_i = [p - g for p, g in zip(W, grads, strict=True)]
                    chain.append(q[i] + layer_norm(inner_model(W_i, q[i], kind), w, beta))
                W = W_i  # the last token's weights are carried
            outs.append(torch.stack(chain).reshape(n_mb, b, -1))
            finals.append(W)
    z = torch.stack(outs).reshape(XK.shape)
    state_out = [torch.stack([f[n] for f in finals]).reshape(state[n].shape) for n in range(len(state))]
    return state_out, z


def make_inputs(kind, B=2, nh=2, n_mb=3, b=4, f=4, dtype=torch.float64, seed=0, lr_scale=0.5, general_eta=True):
    g = torch.Generator().manual_seed(seed)

    def randn(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=dtype) * scale).requires_grad_()

    width = 4 * f if kind == "mlp" else f
    lr = torch.rand(B, nh, n_mb, 1, b, generator=g, dtype=dtype) * lr_scale
    token_eta = 1.0 / torch.arange(1, b + 1, dtype=dtype).reshape(b, 1)
    eta = token_eta * lr
    if general_eta:  # the op must take any eta, not only token_eta[i] * lr_j; the upper triangle must be ignored
        eta = eta * (0.5 + torch.rand(eta.shape, generator=g, dtype=dtype))
    x = dict(
        XK=randn(B, nh, n_mb, b, f), XQ=randn(B, nh, n_mb, b, f), XV=randn(B, nh, n_mb, b, f),
        eta=eta.requires_grad_(),
        ttt_norm_weight=(1 + 0.3 * torch.randn(nh, f, generator=g, dtype=dtype)).requires_grad_(),
        ttt_norm_bias=randn(nh, f, scale=0.3),
        W1_init=randn(B, nh, f, width, scale=f**-0.5), b1_init=randn(B, nh, 1, width, scale=0.1),
    )
    if kind == "mlp":
        x.update(W2_init=randn(B, nh, width, f, scale=width**-0.5), b2_init=randn(B, nh, 1, f, scale=0.1))
    return x


def state_of(kind, x):
    return [x[f"{k}_init"] for k in KEYS[kind]]


def run_op(kind, x, **kw):
    final, z = OPS[kind](**x, **kw)
    return [final[f"{k}_states"] for k in KEYS[kind]], z


def run_primal(kind, x):
    return primal(kind, x["XK"], x["XQ"], x["XV"], x["eta"], x["ttt_norm_weight"], x["ttt_norm_bias"],
                  state_of(kind, x))


def scalar_loss(state, z, seed=1):
    g = torch.Generator().manual_seed(seed)
    total = (z * torch.randn(z.shape, generator=g, dtype=z.dtype)).sum()
    for p in state:
        total = total + (p * torch.randn(p.shape, generator=g, dtype=p.dtype)).sum()
    return total


# --- agreement with the primal ------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_dual_form_matches_primal_float64_outputs_state_and_gradients(kind):
    x = make_inputs(kind)
    state, z = run_op(kind, x)
    ref_state, ref_z = run_primal(kind, x)
    assert rel(z, ref_z) <= 1e-10
    for p, r in zip(state, ref_state, strict=True):
        assert rel(p, r) <= 1e-10
    inputs = list(x.values())
    grads = torch.autograd.grad(scalar_loss(state, z), inputs)
    ref_grads = torch.autograd.grad(scalar_loss(ref_state, ref_z), inputs)
    for name, g, r in zip(x, grads, ref_grads, strict=True):
        assert r.abs().max() > 0, name
        assert rel(g, r) <= 1e-9, name


@pytest.mark.parametrize("kind", KINDS)
def test_float32_agrees_with_float64_primal(kind):
    x64 = make_inputs(kind, seed=3)
    x32 = {k: v.detach().float() for k, v in x64.items()}
    state, z = run_op(kind, x32)
    ref_state, ref_z = run_primal(kind, x64)
    assert z.dtype == torch.float32
    assert rel(z.double(), ref_z) <= 1e-4
    for p, r in zip(state, ref_state, strict=True):
        assert rel(p.double(), r) <= 1e-4


@pytest.mark.parametrize("kind", KINDS)
def test_state_stays_in_its_dtype_with_low_precision_inputs(kind):
    x = {k: v.detach().float() for k, v in make_inputs(kind, seed=4).items()}
    for k in ("XK", "XQ", "XV"):
        x[k] = x[k].bfloat16()
    state, z = run_op(kind, x)
    assert z.dtype == torch.float32 and all(p.dtype == torch.float32 for p in state)


# --- a case computed scalar by scalar (b = 2, f = 2), no tensors, no autograd -----------------------------------


def _ln_scalar(z, w, b):
    n = len(z)
    mu = sum(z) / n
    s = math.sqrt(sum((zc - mu) ** 2 for zc in z) / n + 1e-6)
    return [w[c] * (z[c] - mu) / s + b[c] for c in range(n)], mu, s


def _ln_l2_grad_scalar(z, target, w, b):
    """dl/dz through the textbook LayerNorm Jacobian d xhat_c / d z_a = (delta_ac - 1/n)/s - xc xa / (n s^3)."""
    n = len(z)
    y, mu, s = _ln_scalar(z, w, b)
    dy = [y[c] - target[c] for c in range(n)]
    xc = [zc - mu for zc in z]
    return [sum(dy[c] * w[c] * (((a == c) - 1 / n) / s - xc[c] * xc[a] / (n * s**3)) for c in range(n))
            for a in range(n)]


def _gelu_scalar(x):
    return 0.5 * x * (1 + math.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))


def _gelu_prime_scalar(x):
    c = math.sqrt(2 / math.pi)
    t = math.tanh(c * (x + 0.044715 * x**3))
    return 0.5 * (1 + t) + 0.5 * x * (1 - t * t) * c * (1 + 3 * 0.044715 * x * x)


def _vecmat(x, W):
    return [sum(x[a] * W[a][c] for a in range(len(x))) for c in range(len(W[0]))]


def _scalar_grads(kind, P, k, v, w, b):
    """Per-token dl/dW for every state entry, by the chain rule written out per scalar."""
    target = [v[c] - k[c] for c in range(len(k))]
    z1 = [zi + bi for zi, bi in zip(_vecmat(k, P["W1"]), P["b1"][0], strict=True)]
    if kind == "linear":
        g1 = _ln_l2_grad_scalar(z1, target, w, b)
        return {"W1": [[ka * gc for gc in g1] for ka in k], "b1": [g1]}
    x2 = [_gelu_scalar(z) for z in z1]
    z2 = [zi + bi for zi, bi in zip(_vecmat(x2, P["W2"]), P["b2"][0], strict=True)]
    g2 = _ln_l2_grad_scalar(z2, target, w, b)
    g1 = [sum(P["W2"][a][c] * g2[c] for c in range(len(g2))) * _gelu_prime_scalar(z1[a]) for a in range(len(z1))]
    return {"W1": [[ka * gc for gc in g1] for ka in k], "b1": [g1],
            "W2": [[xa * gc for gc in g2] for xa in x2], "b2": [g2]}


def _scalar_forward(kind, P, q, w, b):
    z = [zi + bi for zi, bi in zip(_vecmat(q, P["W1"]), P["b1"][0], strict=True)]
    if kind == "mlp":
        z = [zi + bi for zi, bi in zip(_vecmat([_gelu_scalar(x) for x in z], P["W2"]), P["b2"][0], strict=True)]
    return [qc + yc for qc, yc in zip(q, _ln_scalar(z, w, b)[0], strict=True)]


def _axpy(P, G, scale):
    return {k: [[p - scale * g for p, g in zip(rp, rg, strict=True)] for rp, rg in zip(P[k], G[k], strict=True)]
            for k in P}


@pytest.mark.parametrize("kind", KINDS)
def test_hand_computed_case_b2_f2(kind):
    rng = random.Random(7)
    f, b, n_mb = 2, 2, 2
    width = 4 * f if kind == "mlp" else f
    shapes = {"W1": (f, width), "b1": (1, width), "W2": (width, f), "b2": (1, f)}
    P = {k: [[rng.uniform(-1, 1) for _ in range(shapes[k][1])] for _ in range(shapes[k][0])] for k in KEYS[kind]}
    # With f = 2, LN(z) = +-(1, -1) unless z's two entries nearly agree (within ~sqrt(eps)): make the output
    # layer's two columns nearly equal so that the loss has a real gradient and the state visibly moves.
    last = "W2" if kind == "mlp" else "W1"
    for row in P[last] + P["b" + last[1]]:
        row[1] = row[0] + rng.uniform(-2e-3, 2e-3)
    toks = [[[rng.uniform(-1, 1) for _ in range(f)] for _ in range(n_mb * b)] for _ in range(3)]
    K, Q, V = toks
    w, beta = [1.2, 0.8], [0.1, -0.2]
    lr, token_eta = [0.9, 0.4, 0.7, 0.3], [1.0, 0.5]

    state, outs = P, []
    for m in range(n_mb):
        grads = [_scalar_grads(kind, state, K[m * b + j], V[m * b + j], w, beta) for j in range(b)]
        for i in range(b):
            W_i = state
            for j in range(i + 1):
                W_i = _axpy(W_i, grads[j], token_eta[i] * lr[m * b + j])
            outs.append(_scalar_forward(kind, W_i, Q[m * b + i], w, beta))
        state = W_i

    def t(rows, shape):
        return torch.tensor(rows, dtype=torch.float64).reshape(shape)

    x = dict(XK=t(K, (1, 1, n_mb, b, f)), XQ=t(Q, (1, 1, n_mb, b, f)), XV=t(V, (1, 1, n_mb, b, f)),
             eta=t([[[te * lr[m * b + j] for j in range(b)] for te in token_eta] for m in range(n_mb)],
                   (1, 1, n_mb, b, b)),
             ttt_norm_weight=t(w, (1, f)), ttt_norm_bias=t(beta, (1, f)))
    x.update({f"{k}_init": t(P[k], (1, 1, *shapes[k])) for k in KEYS[kind]})
    op_state, z = run_op(kind, x)
    assert rel(z, t(outs, z.shape)) <= 1e-12
    for key, p in zip(KEYS[kind], op_state, strict=True):
        update, ref_update = p - x[f"{key}_init"], t(state[key], p.shape) - x[f"{key}_init"]
        assert ref_update.abs().max() > 1e-4  # the inner loop moved: the comparison below sees the update itself
        assert rel(update, ref_update) <= 1e-9


# --- properties ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_causality(kind):
    x = {k: v.detach() for k, v in make_inputs(kind, seed=5).items()}
    B, nh, n_mb, b, f = x["XK"].shape
    _, z = run_op(kind, x)
    z = z.reshape(B, nh, n_mb * b, f)
    for t in (0, b - 1, b + 1, n_mb * b - 1):
        m, i = divmod(t, b)
        for name in ("XK", "XV", "eta_row", "eta_col"):
            y = {k: v.clone() for k, v in x.items()}
            if name == "eta_row":
                y["eta"][:, :, m, i, :] *= 3.0
            elif name == "eta_col":
                y["eta"][:, :, m, :, i] *= 3.0
            else:
                y[name][:, :, m, i] += 1.0
            _, z2 = run_op(kind, y)
            z2 = z2.reshape(B, nh, n_mb * b, f)
            assert torch.equal(z2[:, :, :t], z[:, :, :t]), (name, t)
            if t < n_mb * b - 1 and name != "eta_row":
                assert not torch.allclose(z2[:, :, t + 1:], z[:, :, t + 1:]), (name, t)  # later tokens see it


@pytest.mark.parametrize("kind", KINDS)
def test_inner_loss_lower_at_carried_state(kind):
    x = {k: v.detach() for k, v in make_inputs(kind, n_mb=3, lr_scale=0.05, general_eta=False).items()}
    keys = KEYS[kind]
    start = {k: x[f"{k}_init"] for k in keys}
    ln = (x["ttt_norm_weight"], x["ttt_norm_bias"])
    for m in range(3):
        y = {k: (v[:, :, : m + 1] if k in ("XK", "XQ", "XV", "eta") else v) for k, v in x.items()}
        state, _ = run_op(kind, y)
        carried = dict(zip(keys, state, strict=True))
        k, v = x["XK"][:, :, m], x["XV"][:, :, m]
        before, after = inner_loss(start, k, v, *ln, kind=kind), inner_loss(carried, k, v, *ln, kind=kind)
        assert (after < before).all(), (m, before, after)
        start = carried


@pytest.mark.parametrize("kind", KINDS)
def test_initial_state_gets_gradient_from_last_mini_batch(kind):
    x = make_inputs(kind, n_mb=4)
    _, z = run_op(kind, x)
    inits = state_of(kind, x)
    grads = torch.autograd.grad(z[:, :, -1].square().sum(), inits)
    for key, g in zip(KEYS[kind], grads, strict=True):
        assert g.abs().max() > 1e-6, key


def _saved_bytes(fn):
    """Bytes of the distinct storages autograd keeps for backward while `fn` runs (views counted once)."""
    storages = {}

    def pack(t):
        storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = fn()
    return sum(storages.values()), out


@pytest.mark.parametrize("kind", KINDS)
def test_checkpointing_same_results_fewer_saved_bytes(kind):
    x = make_inputs(kind, n_mb=6, b=4, f=8)
    inputs = list(x.values())
    results = {}
    for group in (0, 1, 2, 4, 6, 10):  # 4: a last group shorter than the others; 10: more than n_mb
        saved, (state, z) = _saved_bytes(lambda g=group: run_op(kind, x, checkpoint_group_size=g))
        grads = torch.autograd.grad(scalar_loss(state, z), inputs)
        results[group] = saved, [*state, z], grads
    saved0, outs0, grads0 = results[0]
    for group in (1, 2, 4, 6, 10):
        saved, outs, grads = results[group]
        for a, b in zip(outs, outs0, strict=True):
            assert torch.equal(a, b)
        for name, a, b in zip(x, grads, grads0, strict=True):
            assert rel(a, b) <= 1e-13, (group, name)
    saved = {g: r[0] for g, r in results.items()}
    assert saved[1] < saved0 and saved[2] < saved0 and saved[6] < saved0 / 2, saved


# --- partial mini-batches --------------------------------------------------------------------------------------


def _partial_inputs(kind, seed):
    x = {k: v.detach() for k, v in make_inputs(kind, n_mb=2, b=6, seed=seed, general_eta=False).items()}
    B, nh, n_mb, b, f = x["XK"].shape
    lr = x["eta"][:, :, :, b - 1, :] * b  # eta[b-1, j] = lr_j / b
    return x, lr, 1.0 / torch.arange(1, b + 1, dtype=torch.float64)


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("chunking", ["tokens", "random"])
def test_partial_then_commit_equals_dual_form(kind, chunking):
    x, lr, token_eta = _partial_inputs(kind, seed=8)
    B, nh, n_mb, b, f = x["XK"].shape
    state, z = run_op(kind, x)
    rng = random.Random(2)
    params = {k: x[f"{k}_init"] for k in KEYS[kind]}
    for m in range(n_mb):
        grads, start, outs = None, 0, []
        while start < b:
            r = 1 if chunking == "tokens" else rng.randint(1, b - start)
            sl = slice(start, start + r)
            out, grads = PARTIAL[kind](
                x["XK"][:, :, m, sl], x["XQ"][:, :, m, sl], x["XV"][:, :, m, sl], lr[:, :, m, sl],
                token_eta[sl].expand(B, 1, r), x["ttt_norm_weight"], x["ttt_norm_bias"], params, grads)
            outs.append(out)
            start += r
        assert rel(torch.cat(outs, dim=2), z[:, :, m]) <= 1e-10
        params = ttt_commit(params, grads, token_eta[-1])
    for key, p in zip(KEYS[kind], state, strict=True):
        assert rel(params[key], p) <= 1e-10


@pytest.mark.parametrize("kind", KINDS)
def test_padding_tokens_contribute_nothing(kind):
    """Pads after the last real token, with lr 0 and the last real token's eta row, leave the real outputs and the
    carried state exactly as the real tokens alone give them."""
    x, lr, token_eta = _partial_inputs(kind, seed=9)
    B, nh, n_mb, b, f = x["XK"].shape
    n_real = 4
    lr[:, :, -1, n_real:] = 0
    eta = token_eta[:, None] * lr[:, :, :, None, :]
    eta[:, :, -1, n_real:] = eta[:, :, -1, n_real - 1: n_real]
    x["eta"] = eta
    state, z = run_op(kind, x)
    y = {k: v.clone() for k, v in x.items()}
    for k in ("XK", "XQ", "XV"):
        y[k][:, :, -1, n_real:] = torch.randn_like(y[k][:, :, -1, n_real:]) * 10
    state2, z2 = run_op(kind, y)
    assert torch.allclose(z2[:, :, :, :n_real], z[:, :, :, :n_real], rtol=0, atol=1e-12)
    for a, c in zip(state, state2, strict=True):
        assert torch.allclose(a, c, rtol=0, atol=1e-12)
    # the same state from the real tokens alone: first mini-batch in dual form, the tail through the partial form
    head = {k: (v[:, :, :1] if k in ("XK", "XQ", "XV", "eta") else v) for k, v in x.items()}
    params = dict(zip(KEYS[kind], run_op(kind, head)[0], strict=True))
    sl = slice(0, n_real)
    out, grads = PARTIAL[kind](x["XK"][:, :, -1, sl], x["XQ"][:, :, -1, sl], x["XV"][:, :, -1, sl],
                               lr[:, :, -1, sl], token_eta[sl], x["ttt_norm_weight"], x["ttt_norm_bias"], params)
    assert rel(out, z[:, :, -1, :n_real]) <= 1e-10
    committed = ttt_commit(params, grads, token_eta[n_real - 1])
    for key, p in zip(KEYS[kind], state, strict=True):
        assert rel(committed[key], p) <= 1e-10


def test_partial_form_is_differentiable_and_commit_broadcasts_per_row():
    x, lr, token_eta = _partial_inputs("mlp", seed=10)
    params = {k: x[f"{k}_init"].clone().requires_grad_() for k in KEYS["mlp"]}
    XK = x["XK"][:, :, 0, :3].clone().requires_grad_()
    out, grads = ttt_mlp_partial(XK, x["XQ"][:, :, 0, :3], x["XV"][:, :, 0, :3], lr[:, :, 0, :3], token_eta[:3],
                                 x["ttt_norm_weight"], x["ttt_norm_bias"], params)
    per_row = torch.tensor([0.5, 0.25], dtype=torch.float64)
    committed = ttt_commit(params, grads, per_row)
    assert torch.allclose(committed["W1"][1], params["W1"][1] - 0.25 * grads["W1"][1])
    g = torch.autograd.grad(out.sum() + committed["W2"].sum(), [XK, *params.values()])
    assert all(t.abs().max() > 0 for t in g)


def test_inner_loss_counts_only_weighted_tokens():
    x, lr, _ = _partial_inputs("linear", seed=11)
    params = {k: x[f"{k}_init"] for k in KEYS["linear"]}
    k, v = x["XK"][:, :, 0], x["XV"][:, :, 0]
    ln = (x["ttt_norm_weight"], x["ttt_norm_bias"])
    weights = torch.ones(k.shape[0], 1, k.shape[2], dtype=k.dtype)
    weights[:, :, 3:] = 0
    masked = inner_loss(params, k, v, *ln, kind="linear", weights=weights)
    assert torch.allclose(masked, inner_loss(params, k[:, :, :3], v[:, :, :3], *ln, kind="linear"))
    assert torch.equal(inner_loss(params, k, v, *ln, kind="linear", weights=weights * 0), torch.zeros_like(masked))


@pytest.mark.parametrize("kind", KINDS)
def test_no_full_mini_batch_passes_the_state_through(kind):
    x = {k: (v.detach()[:, :, :0] if k in ("XK", "XQ", "XV", "eta") else v.detach())
         for k, v in make_inputs(kind).items()}
    state, z = run_op(kind, x)
    assert z.shape == x["XQ"].shape
    assert all(torch.equal(p, x[f"{k}_init"]) for k, p in zip(KEYS[kind], state, strict=True))


def test_shape_errors_are_clear():
    x = {k: v.detach() for k, v in make_inputs("mlp").items()}
    with pytest.raises(ValueError, match="eta must be"):
        ttt_mlp(**{**x, "eta": x["eta"][..., :2]})
    with pytest.raises(ValueError, match="initial state"):
        ttt_mlp(**{**x, "W2_init": x["W2_init"].mT})
    with pytest.raises(ValueError, match="kind"):
        inner_loss({}, x["XK"], x["XV"], x["ttt_norm_weight"], x["ttt_norm_bias"], kind="conv")
