"""Objectives against hand computations, the authors' bugs fixed, and split-invariant normalisation."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from phf.config import OBJECTIVES, AWRConfig, ObjectiveConfig, UnlikelihoodConfig
from phf.training.logprobs import target_logprobs
from phf.training.objectives import AWR, MLE, RWR, LossInputs, Unlikelihood, ValueHead, build_objective

# A 2 x 3 micro-batch; the last token of row 0 is not counted. N = 8 stands for a global count
# larger than this micro-batch's 5 tokens (other micro-batches / ranks hold the rest).
LOGP = [[-0.5, -1.0, -2.0], [-0.1, -3.0, -0.7]]
SCORES = [[0.0, 0.5, 0.9], [2e-4, 1e-3, 0.3]]
MASK = [[True, True, False], [True, True, True]]
N = 8.0
COUNTED = [(i, j) for i in range(2) for j in range(3) if MASK[i][j]]


def batch(values=None, logp=None, **kw) -> LossInputs:
    logp = torch.tensor(LOGP, requires_grad=True) if logp is None else logp
    return LossInputs(
        logp=logp,
        scores=torch.tensor(SCORES),
        mask=torch.tensor(MASK),
        values=None if values is None else torch.tensor(values, requires_grad=True),
        num_tokens=kw.get("num_tokens", N),
    )


def hand_sum(f) -> float:
    """sum over counted tokens of f(logp, score, i, j), divided by N, in plain Python."""
    return sum(f(LOGP[i][j], SCORES[i][j], i, j) for i, j in COUNTED) / N


def log1m_p(logp: float) -> float:
    return math.log(max(1.0 - math.exp(logp), 1e-20))


def close(t: torch.Tensor, x: float) -> None:
    assert t.dim() == 0
    assert math.isclose(t.item(), x, rel_tol=1e-6, abs_tol=1e-7), (t.item(), x)


# ---------------------------------------------------------------- hand computations


def test_mle_by_hand():
    loss, m = MLE()(batch())
    want = (0.5 + 1.0 + 0.1 + 3.0 + 0.7) / N
    close(loss, want)
    close(m["nll"], want)
    assert not m["nll"].requires_grad


def test_unlikelihood_by_hand():
    # threshold 7.8e-4: good (a = 1) are scores 0.0 and 2e-4; 0.5, 1e-3, 0.3 are pushed down.
    loss, m = Unlikelihood(threshold=7.8e-4, alpha=1.0)(batch())
    ul = -math.log(1 - math.exp(-1.0)) - math.log(1 - math.exp(-3.0)) - math.log(1 - math.exp(-0.7))
    close(loss, (0.5 + 0.1 + ul) / N)
    close(m["ul_term"], ul / N)
    close(m["frac_good"], 2 / N)
    close(m["nll"], 5.3 / N)
    # alpha scales only the unlikelihood part.
    loss, _ = Unlikelihood(threshold=7.8e-4, alpha=0.01)(batch())
    close(loss, (0.5 + 0.1 + 0.01 * ul) / N)


def test_unlikelihood_threshold_zero_is_hard_not_the_authors_soft_weight():
    """The authors' `if self.score_threshold:` turned t = 0.0 into a = 1 - s: nearly MLE here."""
    hard, m = Unlikelihood(threshold=0.0, alpha=1.0)(batch())
    soft, _ = Unlikelihood(threshold=0.0, alpha=1.0, soft=True)(batch())
    mle, _ = MLE()(batch())
    # Hard: only s == 0 counts as good, so the 2e-4 token (row 1) is unlikelihood-trained.
    close(m["frac_good"], 1 / N)
    want_hard = hand_sum(lambda lp, s, i, j: -lp if s <= 0.0 else -log1m_p(lp))
    close(hard, want_hard)
    want_soft = hand_sum(lambda lp, s, i, j: -(1 - s) * lp - s * log1m_p(lp))
    close(soft, want_soft)
    assert abs(hard.item() - mle.item()) > 0.1
    assert abs(hard.item() - soft.item()) > 0.1
    # What the bug did: the soft weight on these low scores is within a few % of MLE.
    assert abs(soft.item() - mle.item()) < 0.3 * abs(hard.item() - mle.item())


def test_soft_weight_clamped_to_unit_interval():
    ul = Unlikelihood(soft=True)
    assert ul.good(torch.tensor([-0.5, 0.25, 1.5])).tolist() == [1.0, 0.75, 0.0]


def test_rwr_by_hand():
    loss, m = RWR(beta=10.0)(batch())
    close(loss, hand_sum(lambda lp, s, i, j: -math.exp(-s / 10.0) * lp))
    close(m["mean_weight"], hand_sum(lambda lp, s, i, j: math.exp(-s / 10.0)))
    assert not RWR.needs_value_head


def test_rwr_ignores_values_and_differs_from_the_authors_awr_alpha_1():
    """The authors' RWR was AWR(alpha=1) with V stuck at -0.5: weights exp((R + 0.5)/beta)."""
    loss, _ = RWR(beta=0.5)(batch())
    authors, _ = AWR(alpha=1.0, beta=0.5)(batch(values=[[-0.5] * 3] * 2))
    close(authors, hand_sum(lambda lp, s, i, j: -math.exp((-s + 0.5) / 0.5) * lp))
    assert not math.isclose(loss.item(), authors.item(), rel_tol=0.1)


VALUES = [[-0.5, -0.2, -0.9], [-0.7, -0.1, -0.4]]


def test_awr_by_hand():
    loss, m = AWR(alpha=0.5, beta=10.0)(batch(values=VALUES))

    def w(s, i, j):
        return min(math.exp((-s - VALUES[i][j]) / 10.0), 1000.0)

    pg = hand_sum(lambda lp, s, i, j: -w(s, i, j) * lp)
    vl = hand_sum(lambda lp, s, i, j: (VALUES[i][j] + s) ** 2)
    close(loss, 0.5 * pg + 0.5 * vl)
    close(m["value_loss"], vl)
    close(m["mean_weight"], hand_sum(lambda lp, s, i, j: w(s, i, j)))
    close(m["mean_value"], hand_sum(lambda lp, s, i, j: VALUES[i][j]))
    close(m["mean_advantage"], hand_sum(lambda lp, s, i, j: -s - VALUES[i][j]))
    close(m["frac_clipped"], 0.0)
    assert all(not v.requires_grad for v in m.values())


def test_awr_weight_clip_and_no_gradient_through_weights():
    b = batch(values=VALUES)
    loss, m = AWR(alpha=1.0, beta=0.01, weight_clip=2.0)(b)
    # exp(A / 0.01) with A = -s - V: > 2 wherever A > 0.01 * ln 2; all counted tokens but (0, 1).
    raw = {(i, j): math.exp((-SCORES[i][j] - VALUES[i][j]) / 0.01) for i, j in COUNTED}
    clipped = sum(r > 2.0 for r in raw.values())
    close(m["frac_clipped"], clipped / N)
    close(loss, hand_sum(lambda lp, s, i, j: -min(raw[i, j], 2.0) * lp))
    g_logp, g_values = torch.autograd.grad(loss, [b.logp, b.values])
    # alpha = 1: the value gets no gradient at all, so w is a constant of the graph.
    assert torch.count_nonzero(g_values) == 0
    for i, j in COUNTED:
        assert math.isclose(g_logp[i, j].item(), -min(raw[i, j], 2.0) / N, rel_tol=1e-5, abs_tol=1e-12)
    assert clipped == 4
    # A huge advantage overflows exp to inf; the clip still gives a finite loss and gradient.
    loss, _ = AWR(alpha=1.0, beta=1e-6, weight_clip=1000.0)(batch(values=VALUES))
    assert torch.isfinite(loss)


def test_awr_value_gradient_is_only_the_mse():
    b = batch(values=VALUES)
    loss, _ = AWR(alpha=0.5, beta=10.0)(b)
    (g_values,) = torch.autograd.grad(loss, [b.values])
    for i in range(2):
        for j in range(3):
            want = 0.5 * 2 * (VALUES[i][j] + SCORES[i][j]) / N if MASK[i][j] else 0.0
            assert math.isclose(g_values[i, j].item(), want, rel_tol=1e-6, abs_tol=1e-9)


def test_awr_requires_values():
    with pytest.raises(ValueError, match="values"):
        AWR()(batch())


# ---------------------------------------------------------------- value head


def test_value_head_zero_init_and_gradient_reaches_hidden():
    head = ValueHead(4)
    hidden = torch.randn(2, 3, 4, requires_grad=True)
    v = head(hidden)
    assert v.shape == (2, 3) and v.dtype == torch.float32
    assert torch.equal(v, torch.full((2, 3), -0.5))
    # Value loss only (alpha = 0): at zero init the head's weight learns first...
    b = LossInputs(
        logp=torch.zeros(2, 3), scores=torch.rand(2, 3), mask=torch.ones(2, 3, dtype=torch.bool), values=v, num_tokens=6
    )
    AWR(alpha=0.0)(b)[0].backward()
    assert head.linear.weight.grad.abs().sum() > 0 and head.linear.bias.grad.abs().sum() > 0
    # ... and once it is non-zero the value loss reaches the trunk (hidden is not detached).
    with torch.no_grad():
        head.linear.weight.fill_(0.3)
    hidden.grad = None
    v = head(hidden)
    b = LossInputs(
        logp=torch.zeros(2, 3), scores=torch.rand(2, 3), mask=torch.ones(2, 3, dtype=torch.bool), values=v, num_tokens=6
    )
    AWR(alpha=0.0)(b)[0].backward()
    assert hidden.grad is not None and hidden.grad.abs().sum() > 0
    assert ((v > -1) & (v < 0)).all()


def test_value_head_float32_under_autocast():
    head = ValueHead(8)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        v = head(torch.randn(2, 5, 8))
    assert v.dtype == torch.float32


# ---------------------------------------------------------------- masks and numerics


@pytest.mark.parametrize("name", ["mle", "ul", "rwr", "awr"])
def test_masked_tokens_contribute_nothing(name):
    obj = build_objective(ObjectiveConfig(name))
    values = VALUES if obj.needs_value_head else None
    base_loss, base_m = obj(batch(values=values))
    # Garbage at the uncounted position (0, 2): NaN score, -inf log-prob, NaN value.
    logp = torch.tensor(LOGP)
    logp[0, 2] = -float("inf")
    logp.requires_grad_()
    scores = torch.tensor(SCORES)
    scores[0, 2] = float("nan")
    vals = None
    if values is not None:
        vals = torch.tensor(values)
        vals[0, 2] = float("nan")
        vals.requires_grad_()
    b = LossInputs(logp=logp, scores=scores, mask=torch.tensor(MASK), values=vals, num_tokens=N)
    loss, m = obj(b)
    assert loss.item() == pytest.approx(base_loss.item())
    for k in base_m:
        assert m[k].item() == pytest.approx(base_m[k].item())
    leaves = [logp] + ([vals] if vals is not None else [])
    for g in torch.autograd.grad(loss, leaves):
        assert torch.isfinite(g).all()
        assert g[0, 2] == 0


def test_unlikelihood_finite_gradients_as_p_goes_to_one():
    logp = torch.tensor([0.0, -1e-30, -1e-12, -1e-6, 1e-7, -0.69, -0.7, -50.0, -200.0], requires_grad=True)
    b = LossInputs(logp=logp, scores=torch.ones(9), mask=torch.ones(9, dtype=torch.bool), num_tokens=9)
    loss, _ = Unlikelihood(threshold=0.5, alpha=1.0)(b)
    (g,) = torch.autograd.grad(loss, [logp])
    assert torch.isfinite(loss) and torch.isfinite(g).all()
    # The clamp at 1e-20 caps the per-token penalty at -log(1e-20) = 46.05 (p = 1 exactly).
    per_token = [-log1m_p(x) for x in logp.tolist()]
    assert loss.item() == pytest.approx(sum(per_token) / 9, rel=1e-5)
    # d/dlogp of -log(1 - p) = p / (1 - p) away from the clamp; it pushes p down (positive gradient).
    for x, gx in zip(logp.tolist()[3:], g.tolist()[3:]):
        if x < 0:
            p = math.exp(x)
            assert gx == pytest.approx(p / (1 - p) / 9, rel=1e-3)


# ---------------------------------------------------------------- normalisation invariance


def _tiny_model(seed=0, vocab=11, d=6):
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(4, 5, d, generator=g, dtype=torch.float64).requires_grad_(),  # "trunk" output
        torch.randn(vocab, d, generator=g, dtype=torch.float64).requires_grad_(),  # output embedding
        torch.randint(0, vocab, (4, 5), generator=g),
        torch.rand(4, 5, generator=g),
        torch.rand(4, 5, generator=g) > 0.3,
    )


@pytest.mark.parametrize("name", list(OBJECTIVES))
def test_two_micro_batches_equal_one_batch(name):
    obj = build_objective(ObjectiveConfig(name, ul=UnlikelihoodConfig(threshold=0.5)))
    hidden, weight, targets, scores, mask = _tiny_model()
    head = ValueHead(6).double()
    with torch.no_grad():
        head.linear.weight.normal_()
    params = [hidden, weight, *head.parameters()]
    num_tokens = mask.sum()  # global count, as a 0-dim tensor

    def run(rows):
        logp = target_logprobs(hidden[rows], weight, targets[rows], chunk_tokens=3)
        values = head(hidden[rows]) if obj.needs_value_head else None
        return obj(LossInputs(logp=logp, scores=scores[rows], mask=mask[rows], values=values, num_tokens=num_tokens))

    full_loss, full_m = run(slice(0, 4))
    full_grads = torch.autograd.grad(full_loss, params, allow_unused=True)
    total, metrics, acc = 0.0, {}, [torch.zeros_like(p) for p in params]
    for rows in (slice(0, 1), slice(1, 4)):  # unequal micro-batches: a per-micro-batch mean would differ
        loss, m = run(rows)
        total = total + loss
        for k, v in m.items():
            metrics[k] = metrics.get(k, 0.0) + v
        for a, g in zip(acc, torch.autograd.grad(loss, params, allow_unused=True)):
            if g is not None:
                a += g
    torch.testing.assert_close(total, full_loss)
    for k in full_m:
        torch.testing.assert_close(metrics[k], full_m[k])
    for a, g in zip(acc, full_grads):
        torch.testing.assert_close(a, torch.zeros_like(a) if g is None else g)
    # And the normalisation is the global token mean: MLE's nll metric is mean -logp.
    logp = target_logprobs(hidden, weight, targets)
    torch.testing.assert_close(full_m["nll"], (-logp[mask]).mean().detach().float())


# ---------------------------------------------------------------- registry and inputs


def test_build_objective_reads_the_section_of_the_objective_trained():
    # The defaults are the paper's toxicity values, declared once: by the settings the loss extends.
    assert build_objective(ObjectiveConfig("ul")) == Unlikelihood(threshold=7.8e-4, alpha=1.0, soft=False)
    assert build_objective(ObjectiveConfig("rwr")) == RWR(beta=10.0)
    assert build_objective(ObjectiveConfig("awr")) == AWR(alpha=0.5, beta=10.0, weight_clip=1000.0)
    both = ObjectiveConfig("ul", ul=UnlikelihoodConfig(0.0, 0.01, True), awr=AWRConfig(alpha=0.1))
    assert build_objective(both) == Unlikelihood(0.0, 0.01, True)
    assert build_objective(replace(both, name="awr")) == AWR(alpha=0.1)
    for name in ("mle", "filtering", "conditional"):
        obj = build_objective(ObjectiveConfig(name))
        assert isinstance(obj, MLE) and obj.name == name and not obj.needs_value_head
    assert build_objective(ObjectiveConfig("awr")).needs_value_head
    assert {n: build_objective(ObjectiveConfig(n)).name for n in OBJECTIVES} == {n: n for n in OBJECTIVES}


def test_a_loss_built_in_code_keeps_the_configs_ranges():
    with pytest.raises(ValueError, match="rwr: beta must be > 0, got 0"):
        RWR(beta=0)
    with pytest.raises(ValueError, match=r"awr: alpha must be in \[0, 1\], got 1.5"):
        AWR(alpha=1.5)
    with pytest.raises(ValueError, match="ul: threshold must be finite, got inf"):
        Unlikelihood(threshold=math.inf)
    with pytest.raises(ValueError, match=r"ul: alpha must be a number >= 0, got '0\.1'"):
        Unlikelihood(alpha="0.1")


def test_loss_inputs_validation():
    ok = dict(logp=torch.zeros(2, 3), scores=torch.zeros(2, 3), mask=torch.ones(2, 3, dtype=torch.bool), num_tokens=6)
    LossInputs(**ok)
    with pytest.raises(ValueError, match="scores"):
        LossInputs(**{**ok, "scores": torch.zeros(3, 2)})
    with pytest.raises(ValueError, match="mask must be bool"):
        LossInputs(**{**ok, "mask": torch.ones(2, 3)})
    with pytest.raises(ValueError, match="num_tokens"):
        LossInputs(**{**ok, "num_tokens": 0})
    with pytest.raises(TypeError):
        LossInputs(torch.zeros(2, 3), torch.zeros(2, 3), torch.ones(2, 3, dtype=torch.bool), 6)  # keywords only
