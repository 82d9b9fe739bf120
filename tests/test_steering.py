"""Steering (nbs/08_steering.ipynb): the hook on a tiny transformers MusicGen, CFG halves, no leaked hooks, evaluation."""
import numpy as np
import pandas as pd
import pytest
import torch

from musicsae.core import data_dir
from musicsae.models import SteeringHook, capture
from musicsae.steering import (steer, generate_audio, generate_steered, alpha_sweep, random_direction,
                               mean_cosine, paired_improvement, table2, PAPER_TABLE2, spectral_embedding, steering_jobs,
                               run_steering, score_runs, paired_generate)
from musicsae.steering_truth import concept_units, concept_directions, measure_steering, steering_cells, ground_truth_summary

LAYER, DUR = 1, 0.2   # 10 frames + 3 delay steps


@pytest.fixture(scope="module")
def model(steer_hf):
    torch.set_num_threads(1)
    return steer_hf


@pytest.fixture(scope="module")
def vec(model):
    v = torch.randn(model.d_model, generator=torch.Generator().manual_seed(3))
    return 3 * v / v.norm() * model.d_model ** 0.5


def no_hooks(model): return all(len(b._forward_hooks) == 0 for b in model.layers)


def pre_post(model, layer, vector, prompts=None, **kw):
    "Block output per forward call before (hook registered first) and after the steering hook, during generation."
    pre = []
    h = model.layers[layer].register_forward_hook(lambda m, i, o: pre.append(o.detach().clone()))
    try:
        with steer(model, layer, vector, n_samples=len(prompts) if prompts else 1, **kw) as hook:
            with capture(model, [layer]) as post:
                generate_audio(model, prompts, duration_s=DUR, seed=0)
    finally: h.remove()
    return pre, post[layer], hook


def test_zero_vector_is_bit_identical(model):
    for prompts in (None, ["simple melody", "drums"]):
        n = 2
        base = generate_audio(model, prompts, duration_s=DUR, seed=5, n_samples=n)
        assert torch.equal(base, generate_audio(model, prompts, duration_s=DUR, seed=5, n_samples=n))
        for halves in ("both", "cond", "uncond"):
            z = generate_steered(model, LAYER, torch.zeros(model.d_model), 1.0, 7.0, prompts, duration_s=DUR, seed=5,
                                 n_samples=n, cfg_halves=halves)
            assert torch.equal(base, z), (prompts, halves)
        assert not torch.equal(base, generate_audio(model, prompts, duration_s=DUR, seed=6, n_samples=n))
    assert no_hooks(model)


def test_vector_moves_every_step_by_exactly_the_vector(model, vec):
    with capture(model, [model.n_layers - 1]) as last:                # how many decoder passes generation makes
        generate_audio(model, duration_s=DUR, seed=0)
    steps = len(last[model.n_layers - 1])
    assert steps >= int(round(DUR * model.frame_rate))
    pre, post, hook = pre_post(model, LAYER, vec, alpha=0.5, beta=2.0)
    assert len(pre) == len(post) == hook.calls == steps          # every pass (BOS, then one per new step: KV cache) steered
    assert all(p.shape == (1, 1, model.d_model) for p in pre)
    for p, q in zip(pre, post):
        assert torch.allclose(q - p, vec.expand_as(p), atol=1e-5)   # α·β = 1
    assert hook.steered == steps
    # and the steered generation differs from the baseline
    assert not torch.equal(generate_audio(model, duration_s=DUR, seed=0),
                           generate_steered(model, LAYER, vec, duration_s=DUR, seed=0))


def test_teacher_forced_residuals_and_prompt_positions(model, vec):
    codes = torch.randint(0, model.cardinality, (2, model.n_codebooks, 8), generator=torch.Generator().manual_seed(0))
    base = model.residuals(codes, [LAYER])[LAYER]
    with steer(model, LAYER, vec, alpha=0.25, beta=4.0):
        moved = model.residuals(codes, [LAYER])[LAYER]
    assert torch.allclose(moved - base, vec.expand_as(base), atol=1e-5)
    # steer_prompt=False: in a multi-position call (a prompt pass) only the last position, which predicts the next
    # token, moves; one-position calls (KV-cached steps) always move
    with capture(model, [LAYER]) as raw0: model.forward_codes(codes)
    with steer(model, LAYER, vec, steer_prompt=False) as hook:
        with capture(model, [LAYER]) as raw1: model.forward_codes(codes)
    r0, r1 = raw0[LAYER][0], raw1[LAYER][0]
    assert r0.shape[1] == 8 + model.n_codebooks - 1 and hook.steered == 2
    assert torch.equal(r1[:, :-1], r0[:, :-1]) and torch.allclose(r1[:, -1] - r0[:, -1], vec.expand(2, -1), atol=1e-5)
    pre, post, hook = pre_post(model, LAYER, vec, steer_prompt=False)
    assert all(torch.allclose(q - p, vec.expand_as(p), atol=1e-5) for p, q in zip(pre, post))
    assert no_hooks(model)


def test_cfg_halves(model, vec):
    prompts = ["simple melody"]                      # CFG: batch doubles, conditional rows first
    for halves, moved_rows, still_rows in (("both", slice(0, 2), slice(0, 0)), ("cond", slice(0, 1), slice(1, 2)),
                                           ("uncond", slice(1, 2), slice(0, 1))):
        pre, post, hook = pre_post(model, LAYER, vec, prompts, cfg_halves=halves)
        for p, q in zip(pre, post):
            assert p.shape[0] == 2
            assert torch.allclose((q - p)[moved_rows], vec.expand_as(p[moved_rows]), atol=1e-5)
            assert torch.equal(q[still_rows], p[still_rows])
    kw = dict(duration_s=DUR, seed=1)
    both, cond, unc = (generate_steered(model, LAYER, vec, 1, 1, prompts, cfg_halves=h, **kw) for h in ("both", "cond", "uncond"))
    assert not torch.equal(both, cond) and not torch.equal(cond, unc)
    # without CFG every row is conditional: 'cond' steers like 'both', 'uncond' steers nothing
    nocfg = dict(duration_s=DUR, seed=1, guidance_scale=None)
    b = generate_steered(model, LAYER, vec, 1, 1, prompts, cfg_halves="both", **nocfg)
    assert torch.equal(b, generate_steered(model, LAYER, vec, 1, 1, prompts, cfg_halves="cond", **nocfg))
    assert torch.equal(generate_audio(model, prompts, **nocfg), generate_steered(model, LAYER, vec, 1, 1, prompts, cfg_halves="uncond", **nocfg))
    with pytest.raises(ValueError, match="n_samples"): SteeringHook(vec, cfg_halves="cond")
    with pytest.raises(ValueError, match="cfg_halves"): SteeringHook(vec, cfg_halves="half")
    with pytest.raises(ValueError, match="batch 3"): SteeringHook(vec, cfg_halves="cond", n_samples=1).rows(3)


def test_cfg_mixing_as_documented(model, vec):
    "With identical halves (same inputs), steering shifts the guided logits l_u + γ(l_c − l_u) by δ ('both'), γδ ('cond'), −(γ−1)δ ('uncond')."
    g = 3.0
    codes = torch.randint(0, model.cardinality, (1, model.n_codebooks, 8), generator=torch.Generator().manual_seed(2)).repeat(2, 1, 1)
    def guided(halves=None):
        ctx = steer(model, LAYER, vec, 0.1, 1.0, cfg_halves=halves, n_samples=1) if halves else __import__("contextlib").nullcontext()
        with ctx: L = model.forward_codes(codes)
        return L[1] + g * (L[0] - L[1]), L
    base, L0 = guided()
    both, Lb = guided("both")
    delta = Lb[0] - L0[0]
    assert torch.allclose(Lb[1] - L0[1], delta, atol=1e-5)           # both rows moved alike
    assert delta.abs().max() > 1e-2
    assert torch.allclose(both - base, delta, atol=1e-4)
    assert torch.allclose(guided("cond")[0] - base, g * delta, atol=1e-4)
    assert torch.allclose(guided("uncond")[0] - base, (1 - g) * delta, atol=1e-4)


def test_no_leaked_hooks_also_after_an_exception(model, vec):
    base = generate_audio(model, duration_s=DUR, seed=2)
    with steer(model, LAYER, vec): pass
    assert no_hooks(model)
    with pytest.raises(RuntimeError, match="boom"):
        with steer(model, LAYER, vec):
            generate_audio(model, duration_s=DUR, seed=2); raise RuntimeError("boom")
    assert no_hooks(model)
    with pytest.raises(ValueError, match="does not match"):              # a wrong-size vector fails inside the forward
        with steer(model, LAYER, torch.zeros(model.d_model)) as hook:
            hook.vector = torch.zeros(5); generate_audio(model, duration_s=DUR, seed=2)
    assert no_hooks(model) and torch.equal(base, generate_audio(model, duration_s=DUR, seed=2))
    with pytest.raises(IndexError, match="out of range"): steer(model, model.n_layers, vec).__enter__()
    with pytest.raises(ValueError, match="d_model"): steer(model, LAYER, torch.zeros(7)).__enter__()
    assert no_hooks(model)


def test_through_the_sae(model, vec):
    from musicsae.sae import TopKSAE
    sae = TopKSAE(model.d_model, 4 * model.d_model, 4, layer=LAYER, seed=0)
    codes = torch.randint(0, model.cardinality, (1, model.n_codebooks, 8), generator=torch.Generator().manual_seed(1))
    x = model.residuals(codes, [LAYER])[LAYER]
    v = sae.steering_vector(3, 1.0)
    assert torch.allclose(v, sae.scale * sae.W_dec[3].detach())
    with steer(model, LAYER, v, 1.0, 5.0, sae=sae, add_error=True):       # x̂ + (x − x̂) + v = x + v
        a = model.residuals(codes, [LAYER])[LAYER]
    assert torch.allclose(a, x + 5 * v, atol=1e-4)
    with steer(model, LAYER, v, 1.0, 5.0, sae=sae, add_error=False):      # x̂ + v
        b = model.residuals(codes, [LAYER])[LAYER]
    with torch.no_grad(): ref = sae(x.reshape(-1, model.d_model)).reshape(x.shape) + 5 * v
    assert torch.allclose(b, ref, atol=1e-4) and not torch.allclose(a, b, atol=1e-3)


def test_alpha_sweep_and_controls(model, vec):
    sw = alpha_sweep(model, LAYER, vec / vec.norm(), 10.0, alphas=(0, 0.5, 1), duration_s=DUR, seed=0)
    assert torch.equal(sw[0.0], generate_audio(model, duration_s=DUR, seed=0))
    assert torch.equal(sw[1.0], generate_steered(model, LAYER, vec / vec.norm(), 1.0, 10.0, duration_s=DUR, seed=0))
    r = random_direction(vec, seed=0)
    assert torch.isclose(r.norm(), vec.norm()) and abs(float(r @ vec)) < 0.9 * float(vec.norm()) ** 2
    assert torch.equal(r, random_direction(vec, seed=0)) and not torch.equal(r, random_direction(vec, seed=1))


def test_paired_improvement_matches_scipy():
    from scipy.stats import wilcoxon
    rng = np.random.default_rng(0)
    b = rng.random(30); s = b + rng.normal(0.05, 0.1, 30)
    r = paired_improvement(b, s)
    assert r["tested"] == 30 and r["improved"] == int(((s - b) > 0).sum()) and r["share"] == r["improved"] / 30
    assert np.isclose(r["mean_improvement"], (s - b).mean())
    assert np.isclose(r["p_wilcoxon"], wilcoxon(s - b, alternative="greater").pvalue)
    assert np.isnan(paired_improvement([1.0], [1.0])["p_wilcoxon"])


def test_table2_and_paper_table():
    rows = [dict(sae="L12_ef32_k100", feature=f, kind=k, alpha=1.0, baseline=0.5, steered=0.5 + d)
            for f, d in enumerate([0.1, -0.1, 0.2, 0.3]) for k in ("feature",)]
    rows += [dict(sae="L12_ef32_k100", feature=f, kind="control0", alpha=1.0, baseline=0.5, steered=0.5 + d)
             for f, d in enumerate([-0.1, -0.2, 0.05, -0.3])]
    rows += [dict(sae="L24_ef32_k32", feature=0, kind="feature", alpha=1.0, baseline=0.5, steered=0.4),
             dict(sae="L24_ef32_k32", feature=0, kind="feature", alpha=2.0, baseline=0.5, steered=0.9)]
    t = table2(pd.DataFrame(rows), alpha=1.0).set_index("sae")
    assert t.loc["L12_ef32_k100", "improvement"] == "3/4 (75.0%)" and t.loc["L12_ef32_k100", "control_share"] == 0.25
    assert (t.loc["L12_ef32_k100", "layer"], t.loc["L12_ef32_k100", "k"]) == (12, 100)
    assert t.loc["L24_ef32_k32", "improvement"] == "0/1 (0.0%)"
    assert PAPER_TABLE2.improved.sum() == 268 and PAPER_TABLE2.tested.sum() == 1071
    assert list(PAPER_TABLE2.improvement) == ["96/408 (23.5%)", "46/131 (35.1%)", "27/177 (15.3%)",
                                              "44/149 (29.5%)", "39/135 (28.9%)", "16/71 (22.5%)"]


def tones(f0s, sr=32000, n=6400): return [np.sin(2 * np.pi * f * np.arange(n) / sr).astype(np.float32) for f in f0s]


def test_spectral_embedding_and_cosine():
    E = spectral_embedding(tones([200, 210, 4000]), 32000)
    assert E.shape == (3, 96)
    c = mean_cosine(E, E[:2])
    assert c[0] > c[2] and c[1] > c[2]
    assert np.allclose(mean_cosine(np.eye(2), np.eye(2)), [0.5, 0.5])


def test_run_and_score_files_resume(model, vec, tmp_path):
    from musicsae.sae import TopKSAE
    sae = TopKSAE(model.d_model, 2 * model.d_model, 4, layer=LAYER, seed=0)
    jobs = steering_jobs(sae, f"L{LAYER}_ef2_k4", LAYER, pd.DataFrame(dict(feature=[0, 5], beta=[30.0, 30.0])))
    runs = run_steering(model, jobs, tmp_path, alphas=(0, 1), duration_s=DUR, seed=0, n_control=1)
    assert list(runs.kind) == ["baseline", "feature", "control0", "feature", "control0"]
    mtimes = [p.stat().st_mtime_ns for p in map(__import__("pathlib").Path, runs.path)]
    again = run_steering(model, jobs, tmp_path, alphas=(0, 1), duration_s=DUR, seed=0, n_control=1)
    assert again.equals(runs) and mtimes == [p.stat().st_mtime_ns for p in map(__import__("pathlib").Path, runs.path)]
    # a changed β remakes that feature's clips only; another model (or settings) remakes everything
    jobs2 = jobs.assign(beta=[30.0, 15.0])
    run_steering(model, jobs2, tmp_path, alphas=(0, 1), duration_s=DUR, seed=0, n_control=1)
    now = [p.stat().st_mtime_ns for p in map(__import__("pathlib").Path, runs.path)]
    assert now[:3] == mtimes[:3] and now[3:] != mtimes[3:]
    run_steering(model, jobs2, tmp_path, alphas=(0, 1), duration_s=DUR, seed=0, n_control=1, gen=dict(top_k=50))
    assert all(a != b for a, b in zip(now, [p.stat().st_mtime_ns for p in map(__import__("pathlib").Path, runs.path)]))
    import soundfile as sf
    base = sf.read(runs.path[0], dtype="float32")[0]
    ref = paired_generate(model, [0], duration_s=DUR)[0].numpy()      # transformers' generate: paired sampling at the seed
    assert np.allclose(base, ref, atol=1e-6)
    feat = sf.read(runs.path[1], dtype="float32")[0]
    ref = paired_generate(model, [0], duration_s=DUR, layer=LAYER, vectors=30.0 * sae.steering_vector(0, 1.0)[None])[0].numpy()
    assert np.allclose(feat, ref, atol=1e-4)
    examples = {(f"L{LAYER}_ef2_k4", 0): tones([100, 120]), (f"L{LAYER}_ef2_k4", 5): tones([3000, 3200])}
    s = score_runs(runs, spectral_embedding, examples, model.sample_rate)
    assert len(s) == 4 and np.allclose(s.improvement, s.steered - s.baseline)
    e = spectral_embedding([base, feat, *examples[(f"L{LAYER}_ef2_k4", 0)]], model.sample_rate)
    assert np.isclose(s.baseline[0], mean_cosine(e[:1], e[2:])[0], atol=1e-6)
    assert np.isclose(s.steered[0], mean_cosine(e[1:2], e[2:])[0], atol=1e-6)


def test_batched_steering_makes_the_clips_of_one_at_a_time(model, tmp_path):
    "Table 2's clips made 4 at a time equal those made one by one (paired sampling); resuming a half-made batch keeps it."
    import soundfile as sf
    from musicsae.sae import TopKSAE
    sae = TopKSAE(model.d_model, 2 * model.d_model, 4, layer=LAYER, seed=0)
    jobs = steering_jobs(sae, f"L{LAYER}_ef2_k4", LAYER, pd.DataFrame(dict(feature=[0, 3, 5], beta=[30.0, 20.0, 10.0])))
    kw = dict(alphas=(0, 1, 2), duration_s=DUR, seed=3, n_control=1, prompt="Simple melody")
    one = run_steering(model, jobs, tmp_path / "one", batch_size=1, **kw)
    four = run_steering(model, jobs, tmp_path / "four", batch_size=4, **kw)
    assert len(one) == 1 + 3 * 2 * 2 and list(one.kind) == list(four.kind)
    read = lambda p: sf.read(p, dtype="float32")[0]
    for a, b in zip(one.path, four.path): assert np.allclose(read(a), read(b), atol=1e-4), b
    clips = [read(p) for p in one.path]
    assert all(not np.allclose(clips[0], c) for c in clips[1:])          # every steered clip differs from the baseline
    import os; os.remove(four.path[5]); os.remove(four.path[9])
    again = run_steering(model, jobs, tmp_path / "four", batch_size=4, **kw)
    assert np.allclose(read(again.path[5]), clips[5], atol=1e-4) and np.allclose(read(again.path[9]), clips[9], atol=1e-4)


def test_models_sampling_in_their_own_loop_steer_one_clip_at_a_time(model, vec, tmp_path, monkeypatch):
    "audiocraft takes no logits processor: run_steering makes its clips one by one from the seed (generate_steered)."
    import soundfile as sf
    monkeypatch.setattr(model, "accepts_logits_processor", False, raising=False)
    jobs = pd.DataFrame([dict(sae="S", layer=LAYER, feature=0, beta=2.0, vector=vec.numpy())])
    runs = run_steering(model, jobs, tmp_path, alphas=(0, 1), duration_s=DUR, seed=4, n_control=0, batch_size=8)
    base = generate_audio(model, duration_s=DUR, seed=4)[0].numpy()
    feat = generate_steered(model, LAYER, vec, 1.0, 2.0, duration_s=DUR, seed=4)[0].numpy()
    assert np.allclose(sf.read(runs.path[0], dtype="float32")[0], base, atol=1e-6)
    assert np.allclose(sf.read(runs.path[1], dtype="float32")[0], feat, atol=1e-6) and not np.allclose(base, feat)
    assert no_hooks(model)


def test_paired_seeds_draw_the_same_codes_in_any_batch(model):
    "Defect: one steered clip was compared with one shared baseline; paired seeds must share their draws whatever the batch."
    a = paired_generate(model, [0, 1, 2], duration_s=DUR)
    b = paired_generate(model, [7, 2, 0], duration_s=DUR)
    assert torch.equal(a[0], b[2]) and torch.equal(a[2], b[1]) and not torch.equal(a[0], a[1])
    g = paired_generate(model, [0, 1], duration_s=DUR, prompts="Simple melody", guidance_scale=3.0)   # with CFG too
    assert torch.allclose(g[1], paired_generate(model, [1], duration_s=DUR, prompts="Simple melody", guidance_scale=3.0)[0], atol=1e-4)


def test_per_sample_vectors_steer_only_their_row(model, vec):
    "One batch carries several conditions: row i gets vector i (a zero row is its baseline), both CFG halves alike."
    V = torch.stack([20 * vec, torch.zeros_like(vec), 20 * vec])
    base = paired_generate(model, [0, 1, 2], duration_s=DUR)
    st = paired_generate(model, [0, 1, 2], duration_s=DUR, layer=LAYER, vectors=V)
    assert torch.equal(st[1], base[1]) and not torch.equal(st[0], base[0])
    assert no_hooks(model)


def test_concept_units_find_the_planted_unit_and_diffmean():
    "The unit detecting a concept is chosen on train tracks and scored on held-out ones; DiffMean is the train class-mean gap."
    import scipy.sparse as sp
    from musicsae.features import FeatureStats
    rng = np.random.default_rng(0); n, F, d = 60, 8, 4
    pos = np.arange(n) % 3 == 0
    mu = rng.uniform(0, 0.2, (n, F)); mu[:, 5] += 2.0 * pos
    x = rng.normal(size=(n, d)); x[pos, 1] += 3.0
    ids = [f"t{i}" for i in range(n)]
    st = FeatureStats(ids, sp.csr_matrix(mu), sp.csr_matrix(mu * 1.5), np.full(n, 10), 0.0, x.astype(np.float32))
    C = pd.DataFrame({"c=yes": pos, "c=no": ~pos}, index=ids)
    split = pd.Series(np.where(np.arange(n) < 40, "train", "val"), index=ids)
    u = concept_units(st, C, split).set_index("concept")
    assert u.loc["c=yes", "unit"] == 5 and u.loc["c=yes", "auroc"] == 1.0
    tr = np.arange(40)
    assert np.allclose(u.loc["c=yes", "diffmean"], x[tr][pos[tr]].mean(0) - x[tr][~pos[tr]].mean(0), atol=1e-5)
    top = np.argsort(-mu[:, 5])[:10]
    assert np.isclose(u.loc["c=yes", "beta"], (mu[top, 5] * 1.5).max())
    D = concept_directions(torch.ones(d), 2.0, u.loc["c=yes", "diffmean"], n_random=3, seed=0)
    norms = [float(D["sae"].norm()), float(D["diffmean"].norm()), *map(float, D["random"].norm(dim=1))]
    assert np.allclose(norms, 4.0, atol=1e-5) and D["random"].shape == (3, d)


def test_measurement_is_paired_resumes_and_reads_a_planted_push(model, vec, tmp_path, monkeypatch):
    "A zero direction gains exactly 0 (paired); a readout the push moves shows a gain; a finished cell is not made again."
    import musicsae.steering_truth as S
    tag = lambda clips, sr: pd.DataFrame({"loud=yes": [float(np.abs(c).mean()) for c in clips]})
    z = np.zeros(model.d_model, np.float32)
    plan = pd.DataFrame(dict(concept=["loud=yes"], sae=["s"], layer=[LAYER], sae_dir=[20 * vec.numpy()], diffmean_dir=[z],
                             random_dir=[np.stack([z, z])]))
    clips = measure_steering(model, plan, tag, tmp_path / "gt", alphas=(-1.0, 1.0), n_seeds=4, duration_s=DUR)
    assert len(clips) == 3 * 4 * (1 + 2)   # baseline: 3 blocks of 4 seeds; 2 α × 3 methods × 4 seeds
    cells = steering_cells(clips).set_index(["method", "alpha"])
    assert cells.loc[("diffmean", 1.0), "gain"] == 0 and cells.loc[("random", -1.0), "gain"] == 0
    assert cells.loc[("sae", 1.0), "gain"] != 0 and np.isfinite(cells.delta_ce).all()
    rec, per = ground_truth_summary(clips, steering_cells(clips))
    assert rec["n_concepts"] == 1 and rec["random_gain"] == 0 and rec["n_seeds"] == 4
    monkeypatch.setattr(S, "paired_generate", lambda *a, **k: (_ for _ in ()).throw(AssertionError("made again")))
    again = measure_steering(model, plan, tag, tmp_path / "gt", alphas=(-1.0, 1.0), n_seeds=4, duration_s=DUR)
    pd.testing.assert_frame_equal(again, clips)


def _run_root(tmp_path, monkeypatch):
    from musicsae.core import RunLayout
    (tmp_path / "settings.ini").write_text("[DEFAULT]\n"); (tmp_path / "musicsae").mkdir()
    monkeypatch.setenv("MUSICSAE_ROOT", str(tmp_path))
    return RunLayout("mine")


def test_steering_plan_uses_the_runs_saes_and_never_a_stand_in(model, tmp_path, monkeypatch):
    "Defect: 08 quietly steered a random SAE toward sine tones when no upstream SAE fitted, and still wrote results."
    import soundfile as sf
    from musicsae.sae import TopKSAE
    from musicsae.steering import steering_plan, synthetic_plan
    lay = _run_root(tmp_path, monkeypatch)
    sid = f"L{LAYER}_ef2_k4"
    with pytest.raises(FileNotFoundError, match="04_train_sae"): steering_plan(lay, model, [sid])   # no SAE: a fault
    with pytest.raises(FileNotFoundError, match="04_train_sae"): steering_plan(lay, model, [])
    sae = TopKSAE(model.d_model, 2 * model.d_model, 4, layer=LAYER, seed=0); sae.save(lay.sae(sid))
    with pytest.raises(FileNotFoundError, match="05_features"): steering_plan(lay, model, [sid])    # no features at all
    fdir = lay.features(sid); fdir.mkdir(parents=True)
    pd.DataFrame(dict(feature=[3, 7], status=["obscure", "ubiquitous"], beta=[1.0, 2.0])).to_parquet(fdir / "features.parquet")
    jobs, ex, why = steering_plan(lay, model, [sid])                                              # nothing retained: data
    assert jobs.empty and ex == {} and why == {sid: "0 retained features with example audio"}
    pd.DataFrame(dict(feature=[3, 7], status=["retained", "retained"], beta=[5.0, 2.0])).to_parquet(fdir / "features.parquet")
    (fdir / "examples" / "3").mkdir(parents=True)
    for r, f0 in enumerate([300, 330]): sf.write(fdir / "examples" / "3" / f"{r}.wav", tones([f0])[0][:16000], 16000)
    jobs, ex, why = steering_plan(lay, model, [sid, "L2_ef2_k4"], n_features=5)
    assert jobs.feature.tolist() == [3] and jobs.beta.tolist() == [5.0] and jobs.layer.tolist() == [LAYER]   # 7 has no audio
    assert np.allclose(jobs.vector[0], sae.steering_vector(3, 1.0).numpy()) and "L2_ef2_k4" in why
    assert len(ex[(sid, 3)]) == 2 and len(ex[(sid, 3)][0]) == 2 * 6400   # 16 kHz files, resampled to 32 kHz
    TopKSAE(model.d_model + 1, 8, 4, layer=LAYER).save(lay.sae(sid))
    with pytest.raises(ValueError, match="does not fit"): steering_plan(lay, model, [sid])
    jobs, ex, _ = synthetic_plan(model, seed=0, duration_s=0.1)                               # test fixtures: only when asked
    assert jobs.feature.tolist() == [0, 1] and set(ex) == {(jobs.sae[0], 0), (jobs.sae[0], 1)}


def test_ground_truth_needs_the_corpus_labels():
    "Defect: the ground-truth check ran on any corpus; it needs concepts the run's corpus carries (else a recorded skip)."
    from musicsae.steering_truth import tagger_concepts, tagger_fn
    from musicsae.demo.labelers import DemoTagger
    tg = DemoTagger({"tempo": ["fast", "slow"], "instrument": ["piano", "synth_lead"]}, np.random.default_rng(0).normal(size=(4, 184)).astype(np.float32))
    labels = [{"tempo": 150 if i % 2 else 70, "instrument": "piano"} for i in range(8)] + [{"instrument": "synth_lead"}] * 3
    man = pd.DataFrame(dict(id=[f"c{i}" for i in range(11)], labels=[__import__("json").dumps(l) for l in labels]))
    usable, why = tagger_concepts(tg, man)
    assert why is None and usable == ["instrument=piano", "instrument=synth_lead", "tempo=fast", "tempo=slow"]
    assert tagger_concepts(tg, man.assign(labels="{}")) == ([], "corpus has no labels")
    assert tagger_concepts(tg, man.assign(labels='{"genre": "rock"}'))[1] == "corpus has no labels"   # every clip: not informative
    P = tagger_fn(tg)(tones([220, 440]), 32000)
    assert list(P.columns) == ["tempo=fast", "tempo=slow", "instrument=piano", "instrument=synth_lead"]   # 'facet=value', as the corpus
    assert np.allclose(P[["tempo=fast", "tempo=slow"]].sum(axis=1), 1, atol=1e-5)


# Audio statistics (sum, sum |x|, sum x·(i mod 97)) recorded with the code before the hooks were merged into
# musicsae.models (SteeringHook in steering.py), generation seed 7, 0.2 s: the refactoring must not change a sample.
RECORDED = {"hf_base": [-584.318343575, 584.318343575, -28058.623011655], "hf_both": [-584.330203003, 584.330203003, -28057.878421727],
            "hf_cond": [-584.282891931, 584.282891931, -28054.934839106], "hf_uncond": [-584.305927974, 584.305927974, -28060.725274276],
            "hf_nocfg_cond": [-584.330203003, 584.330203003, -28057.878421727],
            "hf_unconditional": [-584.313869016, 584.313869016, -28057.444018367],
            "demo_base": [0.000626747, 0.051663104, 0.03432752], "demo_steered": [-0.070649385, 34.145022384, 69.472379982]}


def _stats(a):
    a = a.double(); w = torch.arange(a.numel(), dtype=torch.float64).reshape(a.shape) % 97
    return [float(a.sum()), float(a.abs().sum()), float((a * w).sum())]


def test_steered_generation_unchanged_by_the_refactoring(tiny_hf):
    "A steered generation with a fixed seed gives the audio the old code gave (every CFG half, with and without guidance)."
    torch.set_num_threads(1)
    m = tiny_hf
    v = torch.randn(m.d_model, generator=torch.Generator().manual_seed(3)); v = 3 * v / v.norm() * m.d_model ** 0.5
    kw, P = dict(duration_s=0.2, seed=7), ["calm piano", "fast rock drums"]
    got = {"hf_base": generate_audio(m, P, **kw)}
    for h in ("both", "cond", "uncond"): got[f"hf_{h}"] = generate_steered(m, 1, v, 0.5, 2.0, P, cfg_halves=h, **kw)
    got["hf_nocfg_cond"] = generate_steered(m, 1, v, 0.5, 2.0, P, cfg_halves="cond", guidance_scale=None, **kw)
    got["hf_unconditional"] = generate_steered(m, 2, v, 1.0, 1.0, None, n_samples=2, steer_prompt=False, **kw)
    for k, a in got.items():
        assert a.shape == (len(P), 6400) and np.allclose(_stats(a), RECORDED[k], rtol=1e-6, atol=1e-6), (k, _stats(a))


@pytest.mark.skipif(not (data_dir() / "models" / "demo" / "demo_config.json").exists(), reason="demo weights not shipped")
def test_steered_demo_generation_unchanged_by_the_refactoring():
    from musicsae.models import load_model
    torch.set_num_threads(1)
    d = load_model("demo", device="cpu")
    v = torch.randn(d.d_model, generator=torch.Generator().manual_seed(4)); v = 20 * v / v.norm()
    kw = dict(duration_s=0.2, seed=7)
    assert np.allclose(_stats(generate_audio(d, None, **kw)), RECORDED["demo_base"], rtol=1e-5, atol=1e-6)
    assert np.allclose(_stats(generate_steered(d, 6, v, 1.0, 1.0, None, **kw)), RECORDED["demo_steered"], rtol=1e-5, atol=1e-6)


def test_one_steering_hook_for_steering_benchmarks_and_tests(model, vec):
    "Defect: two steering hooks (models.add_vector and steering.SteeringHook) split CFG batches by different rules."
    import musicsae.models as models, musicsae.steering as steering, musicsae.bench.steer as bench_steer
    assert not hasattr(steering, "SteeringHook") and bench_steer.SteeringHook is models.SteeringHook
    with steer(model, LAYER, vec, 0.5, 2.0, cfg_halves="cond", n_samples=1) as hook:
        assert type(hook) is models.SteeringHook and hook.rows(2) == models.cfg_rows(2, 1, "cond") == slice(0, 1)
        assert torch.allclose(hook.vector, vec)
    assert not hasattr(models, "_halves")


def test_bench_steer_keeps_the_callers_tokenizer(tiny_hf):
    "Defect: bench/steer put a byte tokenizer into the caller's model; it now uses the model as it is (model.accepts_text)."
    from musicsae.models import HFMusicGen
    from musicsae.bench.steer import time_steering
    tok = tiny_hf.tokenizer
    r = time_steering(tiny_hf, seconds=0.06, repeats=1)
    assert r["prompt"] == "Simple melody" and r["guidance_scale"] == 3.0 and tiny_hf.tokenizer is tok
    bare = HFMusicGen(tiny_hf.model, tokenizer=None, name="no tokenizer")
    r = time_steering(bare, seconds=0.06, repeats=1)
    assert r["prompt"] is None and bare.tokenizer is None
