"""Interventions (nbs/02e_interventions.ipynb): clamp, ablate, DiffMean projection and LEACE through the one hook, on tiny models."""
import numpy as np
import pytest
import torch

from musicsae.interventions import (clamp_edit, ablate_edit, project_edit, fit_leace, edit_output, clamp_latents,
                                    ablate_latents, project_out, erase)
from musicsae.models import capture
from musicsae.sae import TopKSAE
from musicsae.steering import generate_audio

LAYER, DUR = 1, 0.2


@pytest.fixture(scope="module")
def model(steer_hf):
    torch.set_num_threads(1)
    return steer_hf


@pytest.fixture(scope="module")
def sae(model):
    s = TopKSAE(model.d_model, 4 * model.d_model, 4, layer=LAYER, seed=1)
    with torch.no_grad(): s.b_dec.normal_(generator=torch.Generator().manual_seed(0)); s.scale.fill_(1.5)
    return s


def no_hooks(model): return all(len(b._forward_hooks) == 0 for b in model.layers)


def codes_of(model, B=2, T=8, seed=0):
    return torch.randint(0, model.cardinality, (B, model.n_codebooks, T), generator=torch.Generator().manual_seed(seed))


def test_clamp_moves_only_that_latents_contribution(model, sae):
    codes = codes_of(model)
    x = model.residuals(codes, [LAYER])[LAYER]
    z = sae.encode_dense(x.reshape(-1, model.d_model)).detach().reshape(*x.shape[:2], -1)
    j = int(z.reshape(-1, z.shape[-1]).sum(0).argmax())          # a latent active somewhere
    for v in (0.0, 4.0):
        with clamp_latents(model, LAYER, sae, [j], v) as hook:
            y = model.residuals(codes, [LAYER])[LAYER]
        assert torch.allclose(y - x, (v - z[..., j:j + 1]) * sae.scale * sae.W_dec[j].detach(), atol=1e-4)
        assert hook.calls == 1 and hook.steered == 2 * (8 + model.n_codebooks - 1)
        # in the SAE basis: latent j reads v (where it stays in the top k), the others are unchanged to float tolerance
        zy = sae.encode_dense(y.reshape(-1, model.d_model)).detach().reshape(*x.shape[:2], -1)
        stay = (zy[..., j] > 0) if v > 0 else torch.ones_like(zy[..., j], dtype=torch.bool)
        assert torch.allclose(zy[..., j][stay], torch.full_like(zy[..., j][stay], v), atol=1e-3)
    # a set with one value each: the sum of the single moves
    J, V = [j, (j + 1) % sae.n_latents], [1.0, 2.0]
    with clamp_latents(model, LAYER, sae, J, V): y = model.residuals(codes, [LAYER])[LAYER]
    ref = sum((v - z[..., i:i + 1]) * sae.scale * sae.W_dec[i].detach() for i, v in zip(J, V))
    assert torch.allclose(y - x, ref, atol=1e-4)
    assert no_hooks(model)


def test_ablating_every_latent_leaves_the_error_plus_b_dec(model, sae):
    codes = codes_of(model, seed=1)
    x = model.residuals(codes, [LAYER])[LAYER]
    with ablate_latents(model, LAYER, sae, range(sae.n_latents)): y = model.residuals(codes, [LAYER])[LAYER]
    with torch.no_grad(): err = x - sae(x)
    assert torch.allclose(y, err + sae.scale * sae.b_dec, atol=1e-4)
    # ablating latents that never fire changes nothing
    z = sae.encode_dense(x.reshape(-1, model.d_model)).detach()
    dead = torch.nonzero(z.sum(0) == 0).flatten()[:5]
    with ablate_latents(model, LAYER, sae, dead): y = model.residuals(codes, [LAYER])[LAYER]
    assert torch.allclose(y, x, atol=1e-5)


def test_diffmean_projection_and_leace(model):
    codes = codes_of(model, seed=2)
    x = model.residuals(codes, [LAYER])[LAYER]
    u = torch.randn(model.d_model, generator=torch.Generator().manual_seed(4))
    with project_out(model, LAYER, 3 * u): y = model.residuals(codes, [LAYER])[LAYER]
    un = u / u.norm()
    assert (y @ un).abs().max() < 1e-4
    assert torch.allclose(y, x - (x @ un)[..., None] * un, atol=1e-4)
    with pytest.raises(ValueError, match="zero"): project_edit(torch.zeros(4))
    # LEACE on planted data: a probe refitted on the erased activations is at chance, the unerased one is not
    from musicsae.metrics import probe_auroc
    g = np.random.default_rng(0); n = 3000; yb = g.random(n) < 0.5
    X = g.normal(size=(n, 8)); X[yb] += g.normal(size=8) * 1.5
    Xe = fit_leace(X[:2000], yb[:2000])(torch.as_tensor(X, dtype=torch.float32)).numpy()
    tr, ho = np.arange(2000), np.arange(2000, n)
    assert probe_auroc(X, yb[:, None], tr, ho)[0] > 0.95
    assert abs(probe_auroc(Xe, yb[:, None], tr, ho)[0] - 0.5) < 0.04       # 1,000 held-out rows: chance ± 2 s.e.
    assert np.abs(np.cov(np.c_[Xe[tr], yb[tr]], rowvar=False)[-1, :-1]).max() < 1e-5
    Z = np.c_[yb, g.random(n) < 0.3]; X2 = X + 2.0 * Z[:, 1:] * g.normal(size=8)       # two concepts at once
    E2 = fit_leace(X2, Z)(torch.as_tensor(X2, dtype=torch.float32)).double().numpy()
    assert np.abs(np.cov(np.c_[E2, Z], rowvar=False)[-2:, :-2]).max() < 1e-4
    with erase(model, LAYER, "leace", eraser=fit_leace(np.random.default_rng(1).normal(size=(50, model.d_model)), np.arange(50) % 2)):
        model.residuals(codes, [LAYER])
    with pytest.raises(ValueError, match="method"): erase(model, LAYER, "nope").__enter__()
    assert no_hooks(model)


def test_cfg_halves_and_prompt_positions(model, sae):
    "Two identical rows as a CFG pair of one sample: 'cond' edits row 0 only, 'uncond' row 1 only; steer_prompt=False the last position."
    codes = codes_of(model, B=1, seed=3).repeat(2, 1, 1)
    with capture(model, [LAYER]) as raw0: model.forward_codes(codes)
    j = int(sae.encode_dense(raw0[LAYER][0][0].float()).detach().sum(0).argmax())
    for halves, moved, still in (("both", [0, 1], []), ("cond", [0], [1]), ("uncond", [1], [0])):
        with clamp_latents(model, LAYER, sae, [j], 5.0, cfg_halves=halves, n_samples=1):
            with capture(model, [LAYER]) as raw1: model.forward_codes(codes)
        a, b = raw0[LAYER][0], raw1[LAYER][0]
        for r in moved: assert not torch.allclose(a[r], b[r])
        for r in still: assert torch.equal(a[r], b[r])
    with clamp_latents(model, LAYER, sae, [j], 5.0, steer_prompt=False) as hook:
        with capture(model, [LAYER]) as raw2: model.forward_codes(codes)
    b = raw2[LAYER][0]
    assert torch.equal(b[:, :-1], a[:, :-1]) and hook.steered == 2
    with pytest.raises(ValueError, match="n_samples"): clamp_latents(model, LAYER, sae, [j], 1.0, cfg_halves="cond").__enter__()
    with pytest.raises(IndexError, match="outside"): clamp_edit(sae, [sae.n_latents], 1.0)
    assert no_hooks(model)


def test_inside_generate_with_and_without_cfg(model, sae):
    "Every generation step is edited; a no-op clamp (ablating latents that never fire) is bit-identical; CFG rows per cfg_halves."
    base = generate_audio(model, None, duration_s=DUR, seed=3)
    with ablate_latents(model, LAYER, sae, []) as hook:
        assert torch.equal(base, generate_audio(model, None, duration_s=DUR, seed=3))
    assert hook.calls >= int(round(DUR * model.frame_rate))
    pre = []
    h = model.layers[LAYER].register_forward_hook(lambda m, i, o: pre.append(o.detach().clone()))
    try:
        with clamp_latents(model, LAYER, sae, [0, 1], [3.0, 3.0]) as hook:
            with capture(model, [LAYER]) as post: out = generate_audio(model, None, duration_s=DUR, seed=3)
    finally: h.remove()
    assert len(pre) == len(post[LAYER]) == hook.calls
    for p, q in zip(pre, post[LAYER]):
        z = sae.encode_dense(p.reshape(-1, model.d_model).float()).detach().reshape(*p.shape[:2], -1)
        ref = ((3.0 - z[..., :2])[..., None] * (sae.scale * sae.W_dec[:2].detach())).sum(-2)
        assert torch.allclose(q - p, ref, atol=1e-4)
    assert not torch.equal(out, base)
    # with CFG (a text prompt): batch doubles; 'uncond' leaves the conditional rows of every step alone
    prompts = ["simple melody"]
    pre.clear()
    h = model.layers[LAYER].register_forward_hook(lambda m, i, o: pre.append(o.detach().clone()))
    try:
        with ablate_latents(model, LAYER, sae, range(sae.n_latents), cfg_halves="uncond", n_samples=1):
            with capture(model, [LAYER]) as post: generate_audio(model, prompts, duration_s=DUR, seed=3)
    finally: h.remove()
    for p, q in zip(pre, post[LAYER]):
        assert p.shape[0] == 2 and torch.equal(p[0], q[0]) and not torch.equal(p[1], q[1])
    # per-sample latent sets: sample i clamps set i, its CFG twin too
    with clamp_latents(model, LAYER, sae, [[0], [1]], 2.0, n_samples=2):
        generate_audio(model, ["simple melody", "drums"], duration_s=DUR, seed=3)
    assert no_hooks(model)


def test_demo_model_teacher_forced_and_generating(tiny_demo):
    "The demo architecture: teacher-forced codebook CE moves under ablation; generation runs under a clamp."
    from musicsae.models import codebook_ce
    m = tiny_demo; s = TopKSAE(m.d_model, 2 * m.d_model, 4, layer=1, seed=0)
    codes = codes_of(m, B=2, T=12)
    base = codebook_ce(m.forward_codes(codes), codes)
    with ablate_latents(m, 1, s, range(s.n_latents)): abl = codebook_ce(m.forward_codes(codes), codes)
    assert not torch.allclose(base, abl)
    with clamp_latents(m, 1, s, [0], 10.0) as hook: a = m.generate(duration_s=0.1, seed=0)
    assert hook.calls > 1 and torch.isfinite(a).all()
