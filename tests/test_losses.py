"""The eight named terms of the Safe-CLIP objective, checked against hand computation."""
from __future__ import annotations

import math

import pytest
import torch

from safeclip.train.losses import DEFAULT_WEIGHTS, TERMS, TEXT_ONLY, SafeClipLoss


def unit(*rows):
    t = torch.tensor(rows, dtype=torch.float64)
    return t / t.norm(dim=-1, keepdim=True)


def hand_cos_d(a, b):
    return sum(1 - float(a[i] @ b[i]) for i in range(len(a))) / len(a)


def hand_nce(a, b, scale=100.0):
    n = len(a)
    sim = [[scale * float(a[i] @ b[j]) for j in range(n)] for i in range(n)]
    rows = -sum(sim[i][i] - math.log(sum(math.exp(s) for s in sim[i])) for i in range(n)) / n
    cols = -sum(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(n))) for j in range(n)) / n
    return (rows + cols) / 2


@pytest.fixture
def embs():
    g = torch.Generator().manual_seed(0)
    mk = lambda: torch.nn.functional.normalize(torch.randn(4, 3, generator=g, dtype=torch.float64) * 0.05 + torch.eye(4, 3, dtype=torch.float64), dim=-1)  # noqa: E731
    return {"S": mk(), "U": mk(), "V": mk(), "G": mk()}, {"S": mk(), "V": mk()}


def test_each_term_matches_hand_computation(embs):
    ft, ref = embs
    out = SafeClipLoss(normalise=False)(ft, ref)["terms"]
    expected = {
        "text_safe": hand_cos_d(ft["S"], ref["S"]),
        "text_nsfw": hand_cos_d(ft["U"], ref["S"]),
        "vision_safe": hand_cos_d(ft["V"], ref["V"]),
        "vision_nsfw": hand_cos_d(ft["G"], ref["V"]),
        "S_Vref": hand_nce(ft["S"], ref["V"]),
        "U_Vref": hand_nce(ft["U"], ref["V"]),
        "V_Sref": hand_nce(ref["S"], ft["V"]),
        "G_Sref": hand_nce(ref["S"], ft["G"]),
    }
    assert set(out) == set(expected) == set(DEFAULT_WEIGHTS)  # the paper's eight
    for name, value in expected.items():
        assert out[name].item() == pytest.approx(value, rel=1e-5, abs=1e-6), name


def test_known_values_on_a_tiny_case():
    a = unit([1, 0], [0, 1])
    b = unit([1, 0], [1, 1])
    from safeclip.train.losses import cos_d, nce
    assert cos_d(a, b).item() == pytest.approx((0 + (1 - 1 / math.sqrt(2))) / 2)
    assert nce(a, a).item() == pytest.approx(math.log(1 + math.exp(-100)), abs=1e-12)


def test_total_is_the_weighted_sum_by_name(embs):
    ft, ref = embs
    raw = SafeClipLoss(normalise=False)(ft, ref)
    manual = sum(DEFAULT_WEIGHTS[k] * v for k, v in raw["terms"].items())
    assert raw["total"].item() == pytest.approx(manual.item())
    norm = SafeClipLoss()(ft, ref)  # the official normalisation: weights sum to 1, then / 8
    s = sum(DEFAULT_WEIGHTS.values())
    assert norm["total"].item() == pytest.approx(manual.item() / s / 8)


def test_weights_by_name_and_modes(embs):
    ft, ref = embs
    only = SafeClipLoss({"G_Sref": 2.0}, normalise=False)(ft, ref)
    assert set(only["terms"]) == {"G_Sref"}
    assert only["total"].item() == pytest.approx(2 * only["terms"]["G_Sref"].item())
    text = SafeClipLoss(mode="text")(
        {k: ft[k] for k in ("S", "U")}, ref)  # no image from the tuned model needed
    assert set(text["terms"]) == set(TEXT_ONLY) & set(DEFAULT_WEIGHTS)  # the paper's four
    with pytest.raises(ValueError, match="unknown loss terms"):
        SafeClipLoss({"bogus": 1.0})
    with pytest.raises(KeyError, match="ft\\[G\\]"):
        SafeClipLoss()({k: ft[k] for k in ("S", "U", "V")}, ref)


def test_gradients_reach_only_the_tuned_side(embs):
    ft, ref = embs
    ft = {k: v.clone().requires_grad_(True) for k, v in ft.items()}
    SafeClipLoss()(ft, ref)["total"].backward()
    assert all(v.grad is not None and v.grad.abs().sum() > 0 for v in ft.values())


def hand_hard(q, pos, neg, scale=100.0):
    cands = torch.cat([pos, neg])
    total = 0.0
    for i in range(len(q)):
        sims = [scale * float(q[i] @ c) for c in cands]
        total += -(sims[i] - math.log(sum(math.exp(x) for x in sims)))
    return total / len(q)


def test_hard_negative_extensions(embs):
    ft, ref = embs
    out = SafeClipLoss({"U_Vref_Gneg": 1.0, "G_Sref_Uneg": 1.0}, normalise=False)(ft, ref)["terms"]
    assert out["U_Vref_Gneg"].item() == pytest.approx(hand_hard(ft["U"], ref["V"], ft["G"]), rel=1e-5)
    assert out["G_Sref_Uneg"].item() == pytest.approx(hand_hard(ft["G"], ref["S"], ft["U"]), rel=1e-5)
    assert "U_Vref_Gneg" in TERMS and "U_Vref_Gneg" not in DEFAULT_WEIGHTS  # paper default: off


def test_reference_hard_negative_terms_use_the_originals_unsafe_items(embs):
    ft, ref = embs
    other = lambda x: torch.nn.functional.normalize(x + 0.7 * x.roll(1, 0), dim=-1)  # noqa: E731
    ref = {**ref, "G": other(ft["G"]), "U": other(ft["U"])}  # frozen G, U unlike the tuned
    loss = SafeClipLoss({"U_Vref_Grefneg": 1.0, "G_Sref_Urefneg": 1.0}, normalise=False)
    assert set(loss.ref_inputs) == {"G", "S", "U", "V"}  # the trainer must cache G and U too
    out = loss(ft, ref)["terms"]
    assert out["U_Vref_Grefneg"].item() == pytest.approx(hand_hard(ft["U"], ref["V"], ref["G"]),
                                                         rel=1e-5)
    assert out["G_Sref_Urefneg"].item() == pytest.approx(hand_hard(ft["G"], ref["S"], ref["U"]),
                                                         rel=1e-5)
    # the negatives are the frozen model's, not the tuned one's: the two differ
    tuned = SafeClipLoss({"U_Vref_Gneg": 1.0}, normalise=False)(ft, ref)["terms"]["U_Vref_Gneg"]
    assert tuned.item() != pytest.approx(out["U_Vref_Grefneg"].item(), rel=1e-3)
    with pytest.raises(KeyError, match=r"ref\[G\]"):
        loss(ft, {"S": ref["S"], "V": ref["V"], "U": ref["U"]})


def test_alignment_follows_content_not_positions():
    from safeclip.train.losses import align_tokens

    bos, eos = 1, 2
    s = torch.tensor([[bos, 10, 11, 12, 13, eos, eos, eos]])  # "a man holding a kite"
    # U rewrites one token into two ("a razor blade"), so everything after it shifts by one
    u = torch.tensor([[bos, 10, 11, 12, 20, 21, eos, eos]])
    a = align_tokens(u, s)[0].tolist()
    assert a[:4] == [0, 1, 2, 3]  # the equal prefix, one to one
    assert a[4] == a[5] == 4  # the rewritten span onto the token it replaces
    assert a[6:] == [5, 6]  # the end token and the padding keep their content's place
    # a token U inserts maps to the one before it; positions never leave S
    u2 = torch.tensor([[bos, 10, 30, 11, 12, 13, eos, eos]])
    assert align_tokens(u2, s)[0].tolist() == [0, 1, 1, 2, 3, 4, 5, 6]
    same = align_tokens(s, s)[0].tolist()
    assert same == list(range(8))


def test_token_terms_are_named_and_the_pixel_aligned_one_is_off_by_default():
    from safeclip.train.losses import DEFAULT_WEIGHTS, TERMS, TEXT_ONLY, SafeClipLoss

    for t in ("text_tokens_safe", "text_tokens_nsfw", "vision_tokens_nsfw_mean",
              "vision_tokens_nsfw_nearest", "vision_tokens_nsfw"):
        assert t in TERMS and t not in DEFAULT_WEIGHTS
    assert {"text_tokens_safe", "text_tokens_nsfw"} <= set(TEXT_ONLY)
    loss = SafeClipLoss({"text_nsfw": 1.0, "text_tokens_nsfw": 1.0}, mode="text")
    assert "U_align" in loss.ft_inputs and "S_tokens" in loss.ref_inputs
    g = torch.Generator().manual_seed(0)
    ft = {"U": torch.randn(4, 8, generator=g), "U_tokens": torch.randn(4, 5, 8, generator=g),
          "U_align": torch.tensor([[0, 1, 2, 3, 4]] * 4)}
    ref = {"S": torch.randn(4, 8, generator=g), "S_tokens": ft["U_tokens"].clone()}
    out = loss(ft, ref)
    assert out["terms"]["text_tokens_nsfw"].abs() < 1e-6  # aligned onto identical states
    ft["U_align"] = torch.tensor([[4, 3, 2, 1, 0]] * 4)
    assert loss(ft, ref)["terms"]["text_tokens_nsfw"] > 0.1


def test_nearest_token_term_compares_sets_not_positions():
    from safeclip.train.losses import SafeClipLoss

    loss = SafeClipLoss({"vision_tokens_nsfw_nearest": 1.0}, normalise=False)
    assert loss.ft_inputs == ("G_tokens",) and loss.ref_inputs == ("V_tokens",)
    g = torch.Generator().manual_seed(0)
    v = torch.randn(3, 6, 16, generator=g)
    # the safe counterpart's tokens in another order: nothing to move
    shuffled = v[:, torch.randperm(6, generator=g)]
    assert loss({"G_tokens": shuffled}, {"V_tokens": v})["terms"][
        "vision_tokens_nsfw_nearest"].abs() < 1e-6
    # one token only the unsafe image has: the term is that token's distance to its nearest
    # safe token, averaged over the tokens, and its gradient reaches that token alone
    g_tok = shuffled.clone()
    g_tok[:, 2] = torch.randn(3, 16, generator=g)
    g_tok.requires_grad_(True)
    out = loss({"G_tokens": g_tok}, {"V_tokens": v})["terms"]["vision_tokens_nsfw_nearest"]
    a = torch.nn.functional.normalize(g_tok[:, 2].detach(), dim=-1)
    b = torch.nn.functional.normalize(v, dim=-1)
    want = (1 - torch.einsum("bd,bmd->bm", a, b).amax(-1)).mean() / 6
    assert out.item() == pytest.approx(want.item(), rel=1e-5)
    out.backward()
    moved = g_tok.grad.norm(dim=-1)
    assert (moved[:, 2] > 0).all() and moved[:, [0, 1, 3, 4, 5]].max() < 1e-6
