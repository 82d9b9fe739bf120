"""TopK SAE (musicsae.sae) and its trainer (musicsae.trainer): kernels, recipe invariants, AuxK, recovery of a planted
dictionary, resume, DDP, SAELens export and the spliced next-token loss — on small data the tests make."""
import json, math, os, socket, subprocess, sys
import pytest
import torch
import torch.nn.functional as F

from musicsae.sae import TopKSAE, planted_dictionary, sae_losses, sparse_decode, SparseEncodeGather, geometric_median
from musicsae.trainer import TrainConfig, TensorSource, Trainer, train_sae, evaluate, source_id, sweep, frame_rate_of
from musicsae.sae_eval import spliced_loss
from musicsae.sae_hub import export_saelens
from musicsae.store import ActivationStore, StoreWriter, run_stores
import musicsae.sae as sae_mod
import musicsae.trainer as trainer_mod
from musicsae.demo.model import MelRVQCodec, demo_decoder, DemoMusicModel

torch.set_num_threads(1)


def _data(n=12000, d=16, atoms=64, k=3, seed=0):
    x, A = planted_dictionary(d=d, n_atoms=atoms, k=k, n=n, seed=seed)
    return TensorSource({"train": x[: n * 5 // 6], "val": x[n * 5 // 6:]}), A


def _cfg(**kw):
    base = dict(device="cpu", layer=3, expansion=4, k=4, batch_size=256, train_s=80.0, lr=3e-3, progress=False,
                eval_tokens=2000, init_samples=2000)
    return TrainConfig(**{**base, **kw})


def test_sparse_kernels_match_dense_gradients():
    torch.manual_seed(0)
    n, d, B, k = 40, 5, 6, 3
    W = torch.randn(n, d, dtype=torch.float64, requires_grad=True)
    v = torch.rand(B, k, dtype=torch.float64, requires_grad=True)
    idx = torch.stack([torch.randperm(n)[:k] for _ in range(B)])
    assert torch.autograd.gradcheck(lambda v, W: sparse_decode(v, idx, W), (v, W))
    # against the dense computation z @ W
    z = torch.zeros(B, n, dtype=torch.float64).scatter(1, idx, v.detach())
    torch.testing.assert_close(sparse_decode(v, idx, W), z @ W)
    x = torch.randn(B, d, dtype=torch.float64, requires_grad=True)
    b = torch.randn(n, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda x, W, b: SparseEncodeGather.apply(x, W, b, idx, F.linear(x, W, b).detach()), (x, W, b))


def test_topk_exactly_k_nonzeros():
    sae = TopKSAE(12, 96, 7, seed=3)
    with torch.no_grad(): sae.b_enc.fill_(10.0)  # all pre-activations positive: ReLU cannot zero a selected one
    z = sae.encode_dense(torch.randn(50, 12))
    assert ((z != 0).sum(1) == 7).all()
    # the selected ones are the 7 largest pre-activations
    pre = sae.pre_acts(torch.randn(5, 12))
    vals, idx = sae.encode(torch.randn(5, 12))
    assert vals.shape == (5, 7)


def test_geometric_median_is_robust():
    pts = torch.cat([torch.randn(200, 3) * 0.1, torch.full((20, 3), 50.0)])
    assert geometric_median(pts).norm() < 1.0 < pts.mean(0).norm()


def test_unit_norm_columns_after_steps(tmp_path):
    src, _ = _data()
    sae = train_sae(src, _cfg(train_s=40.0), tmp_path / "a")
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(sae.n_latents), atol=1e-5, rtol=0)
    # the parallel component of the gradient is removed
    out = sae_losses(sae, src.sample(256) / sae.scale)
    out["mse"].backward(); sae.remove_parallel_grad_()
    assert (sae.W_dec.grad * sae.W_dec).sum(1).abs().max() < 1e-6


def test_auxk_loss_matches_reference_and_routes_gradient():
    torch.manual_seed(0)
    sae = TopKSAE(8, 48, 3, seed=2)
    with torch.no_grad(): sae.b_dec.normal_(); sae.b_enc.normal_()
    xs = torch.randn(64, 8)
    dead = torch.zeros(48, dtype=torch.bool); dead[::3] = True
    out = sae_losses(sae, xs, dead, k_aux=5)
    # dense reference: main TopK over all latents, aux TopK over dead latents only, no b_dec in the aux decode
    pre = (xs - sae.b_dec) @ sae.W_enc.T + sae.b_enc
    v, i = pre.topk(3); z = torch.zeros_like(pre).scatter(1, i, v.relu())
    x_hat = z @ sae.W_dec + sae.b_dec
    e = (xs - x_hat).detach()
    va, ia = pre.masked_fill(~dead, -float("inf")).topk(5); za = torch.zeros_like(pre).scatter(1, ia, va.relu())
    ref_aux = ((za @ sae.W_dec - e).pow(2).sum(1).mean() / (e - e.mean(0)).pow(2).sum(1).mean())
    torch.testing.assert_close(out["mse"], (xs - x_hat).pow(2).sum(1).mean())
    torch.testing.assert_close(out["aux"], ref_aux)
    # gradient of the aux term alone: only dead latents' encoder and decoder rows move; the main
    # reconstruction is detached, so live decoder rows get none
    sae.zero_grad(); out["aux"].backward()
    g_enc = sae.W_enc.grad.abs().sum(1); g_dec = sae.W_dec.grad.abs().sum(1)
    assert g_enc[~dead].sum() == 0 and g_dec[~dead].sum() == 0
    assert (g_enc[ia.unique()] > 0).all() and (g_dec[ia.unique()] > 0).all()
    # and it equals the dense reference's gradient
    W_enc = sae.W_enc.detach().clone().requires_grad_(); W_dec = sae.W_dec.detach().clone().requires_grad_()
    pre2 = (xs - sae.b_dec.detach()) @ W_enc.T + sae.b_enc.detach()
    za2 = torch.zeros_like(pre2).scatter(1, ia, pre2.gather(1, ia).relu())
    ((za2 @ W_dec - e).pow(2).sum(1).mean() / (e - e.mean(0)).pow(2).sum(1).mean()).backward()
    torch.testing.assert_close(sae.W_enc.grad, W_enc.grad); torch.testing.assert_close(sae.W_dec.grad, W_dec.grad)


def test_auxk_revives_planted_dead_latents(tmp_path):
    src, _ = _data(n=24000)
    killed = torch.arange(0, 64, 2)  # half the latents: tiny encoder rows, so they never win the TopK

    def kill(sae):  # (their pre-activations stay small but positive on some inputs: AuxK, like ReLU, needs > 0)
        with torch.no_grad(): sae.W_enc[killed] *= 0.02

    fired = {}
    for coef in (1 / 32, 0.0):
        cfg = _cfg(train_s=600.0, auxk_coef=coef, auxk=16, dead_window_s=10.0, dead_window_frac=1.0)
        sae = train_sae(src, cfg, tmp_path / f"c{coef}", init_fn=kill)
        dens = torch.as_tensor(evaluate(sae, src, "val")["density"])
        fired[coef] = float((dens[killed] > 0).float().mean())
    assert fired[0.0] < 0.2, fired          # without AuxK they stay dead
    assert fired[1 / 32] > 0.8, fired       # with AuxK nearly all come back


def test_learns_planted_dictionary(tmp_path):
    src, atoms = _data(n=24000)
    sae = train_sae(src, _cfg(train_s=400.0, k=3, expansion=4), tmp_path / "p")
    hist = json.loads((tmp_path / "p" / "history.json").read_text())
    assert hist[-1]["loss"] < 0.5 * hist[0]["loss"]  # measured: 0.387 -> 0.139
    cos = (atoms @ sae.W_dec.detach().T).max(1).values
    assert (cos > 0.9).float().mean() > 0.8, cos
    m = json.loads((tmp_path / "p" / "metrics.json").read_text())
    assert m["fvu"] < 0.2 and m["l0"] <= 3 and m["id"] == "L3_ef4_k3"
    loaded = TopKSAE.load(tmp_path / "p")
    x = src.sample(10, split="val")
    assert torch.equal(loaded(x), sae(x))


def test_resume_after_interruption_gives_same_weights(tmp_path):
    src, _ = _data()
    cfg = _cfg(train_s=60.0, ckpt_every_s=15.0)  # 11 steps of 256 tokens, checkpoint every 2 steps

    ref = train_sae(src, cfg, tmp_path / "ref")

    class Killed(Exception): pass
    def die(step, sae):
        if step == 7: raise Killed
    with pytest.raises(Killed): train_sae(src, cfg, tmp_path / "run", on_step=die)
    assert (tmp_path / "run" / "ckpt.pt").exists() and not (tmp_path / "run" / "sae.safetensors").exists()
    resumed = train_sae(src, cfg, tmp_path / "run")
    for k, v in ref.state_dict().items(): assert torch.equal(v, resumed.state_dict()[k]), k
    h1 = json.loads((tmp_path / "ref" / "history.json").read_text()); h2 = json.loads((tmp_path / "run" / "history.json").read_text())
    assert h1 == h2


def test_trainer_killed_and_resumed_ends_as_an_uninterrupted_one(tmp_path):
    """Defect guarded: the trainer's state lived in the locals of one long function with a nested closure, so only
    `train_sae` could checkpoint or resume it. A `Trainer` killed mid-run and resumed from its checkpoint by a new
    `Trainer` ends with the uninterrupted run's weights, Adam state, dead-latent counters and history (AuxK live)."""
    src, _ = _data()
    cfg = _cfg(train_s=60.0, ckpt_every_s=15.0, expansion=16, auxk=8, dead_window_s=2.0, dead_window_frac=1.0)  # 11 steps, ckpt every 2
    whole = Trainer(cfg, src)
    whole.fit(src)

    class Killed(Exception): pass
    def die(step, sae):
        if step == 7: raise Killed
    first = Trainer(cfg, src, tmp_path / "run")
    with pytest.raises(Killed): first.fit(src, on_step=die)
    ck = tmp_path / "run" / "ckpt.pt"
    resumed = Trainer(cfg, src, tmp_path / "run")
    assert resumed.load_state(ck) and resumed.step == 6          # the last checkpoint before the kill
    resumed.fit(src)
    assert resumed.step == whole.step == 11 and resumed.history == whole.history
    assert whole.history[-1]["dead"] > 0 and whole.history[-1]["aux"] > 0     # the dead counters mattered
    for k, v in whole.sae.state_dict().items(): assert torch.equal(v, resumed.sae.state_dict()[k]), k
    assert torch.equal(whole.since_fired, resumed.since_fired)
    a, b = whole.opt.state_dict()["state"], resumed.opt.state_dict()["state"]
    assert all(torch.equal(a[i][key], b[i][key]) for i in a for key in a[i])
    # finishing saves the SAE folder and drops the checkpoint
    resumed.finish(src)
    assert not ck.exists() and torch.equal(TopKSAE.load(tmp_path / "run").W_dec, whole.sae.W_dec)
    # a checkpoint made on other activations is not loaded
    first.checkpoint()
    other = Trainer(cfg, TensorSource({k: v * 1.5 for k, v in src.splits.items()}), tmp_path / "other")
    assert not other.load_state(ck) and other.step == 0 and other.history == []


def test_wall_time_checkpoint_is_resumed(tmp_path):
    "Defect: checkpoints came only every hour of audio, so a kill in a short real run lost all of it; now also by wall time."
    src, _ = _data()
    cfg = _cfg(train_s=60.0, checkpoint_s=1e-9)   # 11 steps, far below the 1 h audio interval: only time can write one
    ref = train_sae(src, cfg, tmp_path / "ref")

    class Killed(Exception): pass
    def die(step, sae):
        if step == 7: raise Killed
    with pytest.raises(Killed): train_sae(src, cfg, tmp_path / "run", on_step=die)
    assert torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)["step"] == 7
    seen = []
    resumed = train_sae(src, cfg, tmp_path / "run", on_step=lambda step, sae: seen.append(step))
    assert seen == [8, 9, 10, 11]                 # resumed after step 7, not from scratch
    for k, v in ref.state_dict().items(): assert torch.equal(v, resumed.state_dict()[k]), k
    assert json.loads((tmp_path / "ref" / "history.json").read_text()) == json.loads((tmp_path / "run" / "history.json").read_text())
    # the setting does not change the result: a finished SAE is reused whatever checkpoint_s
    assert train_sae(src, _cfg(train_s=60.0, checkpoint_s=600.0), tmp_path / "ref", on_step=lambda *a: 1 / 0) is not None
    # checkpoint_s off: no checkpoint before the audio interval (what a kill lost before)
    with pytest.raises(Killed): train_sae(src, _cfg(train_s=60.0, checkpoint_s=None), tmp_path / "off", on_step=die)
    assert not (tmp_path / "off" / "ckpt.pt").exists()


def test_kill_during_final_evaluation_keeps_the_training(tmp_path, monkeypatch):
    "A checkpoint is written after the last step: a kill while evaluating resumes with no step left to train."
    src, _ = _data()
    cfg = _cfg(train_s=60.0, checkpoint_s=600.0)
    ref = train_sae(src, cfg, tmp_path / "ref")
    class Killed(Exception): pass
    def killed(*a, **k): raise Killed
    monkeypatch.setattr(trainer_mod, "evaluate", killed)
    with pytest.raises(Killed): train_sae(src, cfg, tmp_path / "run")
    monkeypatch.undo()
    assert torch.load(tmp_path / "run" / "ckpt.pt", weights_only=False)["step"] == 11
    seen = []
    resumed = train_sae(src, cfg, tmp_path / "run", on_step=lambda step, sae: seen.append(step))
    assert seen == [] and not (tmp_path / "run" / "ckpt.pt").exists()
    for k, v in ref.state_dict().items(): assert torch.equal(v, resumed.state_dict()[k]), k


def test_run_stores_read_the_layout_and_name_the_stage(tmp_path, monkeypatch):
    "Stores come from RunLayout(config).acts(layer); a missing one says to run 03_activations."
    monkeypatch.setenv("MUSICSAE_ROOT", str(tmp_path))
    from musicsae.core import RunLayout
    with pytest.raises(FileNotFoundError, match="run 03_activations first"): run_stores("x", [])
    x, _ = planted_dictionary(d=8, n_atoms=16, k=2, n=400, seed=0)
    card = dict(format=1, model="synthetic", layer=3, d_model=8, frame_rate=50.0, dtype="float16", manifest_hash="x", n_manifest=2)
    w = StoreWriter(RunLayout("x").acts(3), card, shard_tokens=1000)
    w.add("t0", "train", x[:200]); w.add("t1", "val", x[200:]); w.close()
    st = run_stores("x", [])
    assert list(st) == [3] and st[3].n_tokens == 400
    with pytest.raises(FileNotFoundError, match=r"L6.*run 03_activations first"): run_stores("x", [3, 6])


def test_finished_or_checkpointed_sae_is_reused_only_on_the_same_activations(tmp_path, caplog):
    "Re-running with the same data loads the saved SAE; new activations (e.g. a retrained model) retrain it."
    src, _ = _data()
    cfg = _cfg(train_s=60.0, ckpt_every_s=15.0)
    first = train_sae(src, cfg, tmp_path / "s")
    again = train_sae(src, cfg, tmp_path / "s")
    assert all(torch.equal(v, again.state_dict()[k]) for k, v in first.state_dict().items())
    other = TensorSource({k: v * 1.5 for k, v in src.splits.items()})
    retrained = train_sae(other, cfg, tmp_path / "s")
    assert not torch.equal(retrained.W_dec, first.W_dec)
    assert json.loads((tmp_path / "s" / "cfg.json").read_text())["source"] == json.loads(json.dumps(source_id(other)))
    # a checkpoint left by a killed run on other activations is not resumed
    class Killed(Exception): pass
    def die(step, sae):
        if step == 5: raise Killed
    with pytest.raises(Killed): train_sae(src, cfg, tmp_path / "k", on_step=die)
    fresh = train_sae(other, cfg, tmp_path / "k")
    assert all(torch.equal(v, fresh.state_dict()[k]) for k, v in retrained.state_dict().items())


def test_nan_stops_with_step(tmp_path):
    src, _ = _data()
    x = src.splits["train"].clone(); x[3000:] = float("nan")
    cfg = _cfg(batch_size=256, init_samples=500)
    bad = TensorSource({"train": x})
    bad.sample = lambda n, seed=0, split="train": x[:n]
    with pytest.raises(FloatingPointError, match="at step"):
        train_sae(bad, cfg, tmp_path / "nan")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def _ddp_worker(rank, world, port, out):
    import torch.distributed as dist
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    try:
        src, _ = _data()
        train_sae(src, _cfg(train_s=40.0), out)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_one(tmp_path):
    import torch.multiprocessing as mp
    src, _ = _data()
    one = train_sae(src, _cfg(train_s=40.0), tmp_path / "one")
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "two")), nprocs=2, join=True)
    two = TopKSAE.load(tmp_path / "two")
    for k, v in one.state_dict().items(): torch.testing.assert_close(two.state_dict()[k], v, atol=2e-5, rtol=1e-4)


def test_sweep_grid(tmp_path):
    src, _ = _data(n=3000)
    df = sweep(lambda layer: src, [1, 2], tmp_path, expansions=(2,), ks=(2, 4), base=_cfg(train_s=10.0))
    assert list(df.id) == ["L1_ef2_k2", "L1_ef2_k4", "L2_ef2_k2", "L2_ef2_k4"]
    assert all((tmp_path / i / "sae.safetensors").exists() for i in df.id)


def test_saelens_loads_export_with_same_encodings(tmp_path):
    sae_lens = pytest.importorskip("sae_lens")
    src, _ = _data(n=3000)
    sae = train_sae(src, _cfg(train_s=10.0), tmp_path / "s")
    export_saelens(sae, tmp_path / "lens")
    lens = sae_lens.SAE.load_from_disk(str(tmp_path / "lens"), device="cpu")
    x = src.sample(64, split="val")
    with torch.no_grad():
        z_ours = sae.encode_dense(x); z_lens = lens.encode(x)
        torch.testing.assert_close(z_lens, z_ours, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(lens.decode(z_lens), sae(x), atol=1e-4, rtol=1e-5)


class _Identity(torch.nn.Module):
    "A 'perfect SAE' (returns its input) and a 'zero SAE', duck-typed for spliced_loss."
    def __init__(self, zero=False):
        super().__init__(); self.zero = zero; self.W_dec = torch.nn.Parameter(torch.zeros(1))
    def forward(self, h): return torch.zeros_like(h) if self.zero else h


def test_spliced_loss_identity_is_1_zero_is_0(tmp_path):
    codec = MelRVQCodec(n_codebooks=2, cardinality=32)
    lm = demo_decoder(codec, seed=0, num_hidden_layers=2, hidden_size=32, num_attention_heads=2, ffn_dim=64)
    mm = DemoMusicModel(codec, lm, device="cpu")
    codes = torch.randint(0, 32, (2, 2, 20), generator=torch.Generator().manual_seed(0))
    r = spliced_loss(mm, _Identity(), 0, codes)
    assert r["loss_recovered"] == pytest.approx(1.0, abs=1e-6) and r["ce_sae"] == pytest.approx(r["ce_clean"], abs=1e-6)
    assert r["ce_ablated"] != pytest.approx(r["ce_clean"], abs=1e-4)
    z = spliced_loss(mm, _Identity(zero=True), 0, codes)
    assert z["loss_recovered"] == pytest.approx(0.0, abs=1e-6) and len(z["per_codebook"]) == 2
    # a real TopK SAE trained on this layer's residuals runs through the same path (on a randomly initialised
    # model every CE is ≈ ln(V), so its loss recovered is noise: only check that the numbers are real)
    codes = torch.randint(0, 32, (8, 2, 50), generator=torch.Generator().manual_seed(1))
    h = mm.residuals(codes, [0])[0].reshape(-1, 32)
    src = TensorSource({"train": h[:320], "val": h[320:]})
    sae = train_sae(src, _cfg(layer=0, expansion=4, k=8, batch_size=64, train_s=64 * 20 / 50, init_samples=320), tmp_path / "spl")
    s = spliced_loss(mm, sae, 0, codes[:2])
    assert all(math.isfinite(s[k]) for k in ("ce_clean", "ce_sae", "ce_ablated", "loss_recovered"))


def test_trains_from_an_activation_store(tmp_path):
    x, atoms = planted_dictionary(d=16, n_atoms=64, k=3, n=6000, seed=1)
    card = dict(format=1, model="synthetic", layer=4, d_model=16, frame_rate=50.0, dtype="float16", manifest_hash="x", n_manifest=30)
    w = StoreWriter(tmp_path / "L4", card, shard_tokens=1000)
    for i in range(30):  # 30 'tracks' of 200 frames; every 6th held out
        w.add(f"t{i}", "val" if i % 6 == 0 else "train", x[i * 200:(i + 1) * 200])
    w.close()
    store = ActivationStore(tmp_path / "L4")
    assert store.d_model == 16 and store.n_tokens == 6000
    sae = train_sae(store, _cfg(layer=4, train_s=None, epochs=3, batch_size=250), tmp_path / "sae" / "L4_ef4_k4")
    m = json.loads((tmp_path / "sae" / "L4_ef4_k4" / "metrics.json").read_text())
    assert m["n_tokens"] == 1000 and m["fvu"] < 0.5 and m["id"] == "L4_ef4_k4"
    assert json.loads((tmp_path / "sae" / "L4_ef4_k4" / "cfg.json").read_text())["steps"] == 3 * 5000 // 250


@pytest.mark.parametrize("n,k", [(64, 4), (64, 16)])   # k < n/8: coo on CPU; k ≥ n/8: the dense GEMM path
def test_sparse_weight_gradient_methods_agree(n, k):
    "Every way of building the [n, d] weight gradient (incl. the dense CPU path `auto` picks for AuxK-sized k) gives Gᵀv."
    g = torch.Generator().manual_seed(0)
    idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(40)]); w = torch.randn(40, k, generator=g)
    v = torch.randn(40, 8, generator=g)
    ref = torch.zeros(40, n).scatter_add_(1, idx, w).T @ v
    for m in ("coo", "index_add", "dense", "auto") + (("numba",) if sae_mod._cpu_kernels() else ()):
        torch.testing.assert_close(sae_mod._gather_outer(n, idx, w, v, m), ref, atol=1e-5, rtol=1e-5)


def test_cpu_topk_kernel_selects_what_torch_topk_selects():
    """Defect guarded: the numba TopK (block maxima, then a pass over the entries above the k-th largest of them) must
    select exactly the latents `torch.topk` selects — on sizes whose blocks do not divide n, with ties, with -inf, and
    with NaN (which torch.topk ranks highest: such rows go to torch.topk) — and, where torch.topk partially sorts
    (n ≥ 64k), in the same order of values."""
    pytest.importorskip("numba")
    g = torch.Generator().manual_seed(0)
    for B, n, k in [(1024, 512, 32), (512, 4096, 32), (300, 1001, 17), (129, 8192, 100), (256, 2049, 64)]:
        pre = torch.randn(B, n, generator=g) * 3 + 1
        i, ref = sae_mod._topk_idx(pre, k), pre.topk(k, dim=-1, sorted=False).indices
        assert torch.equal(i.sort(1).values, ref.sort(1).values), (B, n, k)
        if n >= 64 * k: assert torch.equal(pre.gather(1, i), pre.gather(1, ref)), (B, n, k)
    ties = torch.randint(0, 30, (400, 1024), generator=g).float()
    assert torch.equal(ties.gather(1, sae_mod._topk_idx(ties, 16)).sort(1).values, ties.topk(16, dim=-1).values.sort(1).values)
    inf = torch.full((300, 1024), float("-inf")); inf[:, 7] = 1.0; inf[:, 900:940] = 0.5
    assert torch.equal(inf.gather(1, sae_mod._topk_idx(inf, 16)).sort(1).values, inf.topk(16, dim=-1).values.sort(1).values)
    nan = torch.randn(300, 1024, generator=g); nan[5, 1023] = float("nan")   # in the last column: past the last full block
    assert torch.isnan(nan.gather(1, sae_mod._topk_idx(nan, 16))[5]).any()


def test_cpu_row_kernels_match_torch():
    """Defect guarded: the numba weight-gradient and row-dot kernels must compute the sums the COO product and
    embedding_bag's per-sample-weight gradient compute (float32, to rounding)."""
    pytest.importorskip("numba")
    g = torch.Generator().manual_seed(1)
    n, B, k, d = 300, 700, 24, 40
    idx = torch.stack([torch.randperm(n, generator=g)[:k] for _ in range(B)]); w = torch.randn(B, k, generator=g)
    v, W = torch.randn(B, d, generator=g), torch.randn(n, d, generator=g)
    torch.testing.assert_close(sae_mod._gather_outer(n, idx, w, v, "numba"), sae_mod._gather_outer(n, idx, w, v, "coo"))
    torch.testing.assert_close(sae_mod._rowdot(W, idx, v), (W[idx] * v[:, None]).sum(-1))
    torch.set_num_threads(2)
    try: torch.testing.assert_close(sae_mod._gather_outer(n, idx, w, v, "numba"), sae_mod._gather_outer(n, idx, w, v, "coo"))
    finally: torch.set_num_threads(1)


def test_cpu_kernels_train_the_same_sae(tmp_path, monkeypatch):
    """Defect guarded: the CPU kernels (TopK, weight gradients, row dots) and the reused pre-activation buffer must
    train the SAE that the torch ops train — the same latents each step, weights equal to float rounding — at a
    size where every kernel runs (B·n ≥ 2¹⁶, n ≥ 8k)."""
    pytest.importorskip("numba")
    x, _ = planted_dictionary(d=16, n_atoms=64, k=3, n=4096, seed=0)
    cfg = _cfg(expansion=32, k=8, batch_size=256, train_s=20 * 256 / 50, eval_tokens=0)
    fast = train_sae(TensorSource({"train": x}), cfg, tmp_path / "fast")
    monkeypatch.setattr(sae_mod, "_NUMBA", False)
    slow = train_sae(TensorSource({"train": x}), cfg, tmp_path / "slow")
    for k, v in slow.state_dict().items(): torch.testing.assert_close(fast.state_dict()[k], v, atol=1e-5, rtol=1e-4)
    monkeypatch.undo()
    xb = x[:512] / fast.scale
    assert torch.equal(sae_losses(fast, xb)["idx"].sort(1).values, fast.pre_acts(x[:512]).topk(8, dim=-1).indices.sort(1).values)


def test_reused_pre_activation_buffer_does_not_leak_between_steps():
    """Defect guarded: the CPU pre-activation buffer is reused across calls; a second forward (another batch size,
    then the same one) before the first backward must not change the first step's losses or gradients."""
    sae = TopKSAE(16, 512, 8, seed=3)
    x1, x2, x3 = torch.randn(256, 16), torch.randn(100, 16), torch.randn(256, 16)
    ref = sae_losses(sae, x1)
    ref["mse"].backward(); g_ref = sae.W_enc.grad.clone(); sae.zero_grad()
    out1 = sae_losses(sae, x1); sae_losses(sae, x2); sae_losses(sae, x3)
    assert torch.equal(out1["mse"], ref["mse"]) and torch.equal(out1["idx"], ref["idx"])
    out1["mse"].backward(); assert torch.equal(sae.W_enc.grad, g_ref)
    assert torch.equal(sae_mod._encoder_pre(sae, x2 - sae.b_dec), F.linear(x2 - sae.b_dec, sae.W_enc, sae.b_enc))


def test_bench_data_is_learnable_and_not_the_init():
    """The SAE benchmark's data: finite for every seed (it once drew log(0) = inf), unit variance per token, and its planted
    dictionary is not what a seed-0 SAE starts from (it once was: the same generator seed made init == answer)."""
    from musicsae.bench.sae import bench_data
    for seed in range(3):
        x, atoms = bench_data(65536, 32, seed=seed, return_atoms=True)
        assert torch.isfinite(x).all()
        assert abs(float((x - x.mean(0)).pow(2).sum(1).mean()) - 1) < 0.02
    W = TopKSAE(32, 256, 8, seed=0).W_dec.detach()
    assert (W @ atoms.T).abs().max() < 0.9


def test_bench_race_trains_well_below_fvu_1(tmp_path):
    """The like-for-like recipe of `bench sae` at a fixed token budget ends well below FVU 1 and still falling
    (a 6-step run once printed FVU 1.27 vs 0.96: a comparison of initialisations, not of trainers)."""
    from musicsae.bench.sae import bench_data, run_ours, falling
    pool, val = bench_data(64 * 128, 32, seed=0), bench_data(2048, 32, seed=1)
    tps, fvu, hist = run_ours(pool, val, n=128, k=8, steps=120, warmup=2, batch=128, device=torch.device("cpu"),
                              lr=2e-4 / math.sqrt(128 / 2**14), dead_tokens=30 * 128)
    q3, end = falling(hist)
    assert tps > 0 and fvu < 0.5 and end < q3, (fvu, q3, end)


def test_bench_summaries():
    "Median / min / max / relative spread and the 'still falling' windows, against hand-computed values."
    from musicsae.bench.sae import summary, falling
    s = summary([3.0, 1.0, 10.0, 2.0])
    assert (s["median"], s["min"], s["max"], s["n"]) == (2.5, 1.0, 10.0, 4) and abs(s["spread"] - 3.6) < 1e-12
    assert falling([float(20 - i) for i in range(20)]) == (6.5, 1.5)   # tenth ending at ¾: steps 13–14; last tenth: 18–19
    from musicsae.bench.paper import extrapolate, arch_of
    assert abs(extrapolate([1, 2], [3.0, 5.0], 48) - 97.0) < 1e-9 and abs(extrapolate([2], [4.0], 48) - 96.0) < 1e-9
    assert arch_of("hf:facebook/musicgen-large") == "musicgen-large"


def test_grad_method_is_a_training_setting_not_a_module_switch(tmp_path):
    """Defect guarded: the sparse-gradient kernel was a module-level `GRAD_METHOD` that the benchmark set for the whole
    process. It is `TrainConfig.grad_method` now: every kernel trains the same SAE (to float rounding), an unknown one
    stops the run naming it, and that run leaves the next default run bit for bit unchanged."""
    assert not hasattr(sae_mod, "GRAD_METHOD")
    src, _ = _data(n=3000)
    ref = train_sae(src, _cfg(train_s=80.0), tmp_path / "auto")
    for m in ("coo", "index_add", "dense"):
        s = train_sae(src, _cfg(train_s=80.0, grad_method=m), tmp_path / m)
        for k, v in ref.state_dict().items(): torch.testing.assert_close(s.state_dict()[k], v, atol=1e-5, rtol=1e-5)
    with pytest.raises(ValueError, match="unknown sparse gradient method 'bogus'"):
        train_sae(src, _cfg(train_s=80.0, grad_method="bogus"), tmp_path / "bogus")
    again = train_sae(src, _cfg(train_s=80.0), tmp_path / "again")
    for k, v in ref.state_dict().items(): assert torch.equal(again.state_dict()[k], v), k


def test_budgets_in_seconds_use_the_store_frame_rate(tmp_path):
    """Defect guarded: a module constant FRAME_RATE = 50 duplicated the store card's `frame_rate`, so activations of a
    model at another rate got the step budget and dead window of the wrong amount of audio. Both come from the card."""
    x, _ = planted_dictionary(d=8, n_atoms=16, k=2, n=3000, seed=0)
    for fr in (50.0, 25.0):
        card = dict(format=1, model="synthetic", layer=2, d_model=8, frame_rate=fr, dtype="float16", manifest_hash="x", n_manifest=2)
        w = StoreWriter(tmp_path / f"acts{fr:g}" / "L2", card, shard_tokens=1000)
        w.add("t0", "train", x[:2500]); w.add("t1", "val", x[2500:]); w.close()
        store = ActivationStore(tmp_path / f"acts{fr:g}" / "L2")
        assert frame_rate_of(store) == fr
        cfg = _cfg(layer=2, train_s=40.0, batch_size=100, dead_window_s=8.0, dead_window_frac=1.0, init_samples=500)
        train_sae(store, cfg, tmp_path / f"sae{fr:g}")
        c = json.loads((tmp_path / f"sae{fr:g}" / "cfg.json").read_text())
        assert (c["steps"], c["dead_window_tokens"]) == ({50.0: 20, 25.0: 10}[fr], {50.0: 400.0, 25.0: 200.0}[fr])
    with pytest.raises(ValueError, match="no frame rate"): frame_rate_of(type("NoRate", (), {"card": {"layer": 2}})())


def test_sae_saved_before_a_config_field_existed_is_reused(tmp_path):
    """Defect guarded: a finished SAE is reused only when its saved training config equals the new one, so adding a
    TrainConfig field (here `grad_method`) would retrain every SAE saved before it. A field the saved config lacks
    counts as its default; a non-default value still retrains."""
    src, _ = _data(n=3000)
    first = train_sae(src, _cfg(train_s=20.0), tmp_path / "s")
    p = tmp_path / "s" / "cfg.json"
    c = json.loads(p.read_text()); del c["train"]["grad_method"]; p.write_text(json.dumps(c))
    again = train_sae(src, _cfg(train_s=20.0), tmp_path / "s", on_step=lambda *a: 1 / 0)   # loaded: no step runs
    assert torch.equal(again.W_dec, first.W_dec)
    steps = []
    train_sae(src, _cfg(train_s=20.0, grad_method="coo"), tmp_path / "s", on_step=lambda step, sae: steps.append(step))
    assert steps == [1, 2, 3]


def test_model_module_stands_alone():
    """Importing the model (musicsae.sae) loads nothing of the trainer (no import circle: the trainer imports the model);
    the trainer's command line is `python -m musicsae.trainer`."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    code = ("import sys, musicsae.sae as s; assert 'musicsae.trainer' not in sys.modules, 'the model imports the trainer'; "
            "assert not hasattr(s, 'train_sae'); import musicsae.trainer; "
            "assert 'musicsae.models' not in sys.modules, 'the SAE or its trainer imports a music model'; import musicsae.features")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)
    out = subprocess.run([sys.executable, "-m", "musicsae.trainer", "--help"], capture_output=True, text=True, cwd=root)
    assert out.returncode == 0 and "--store" in out.stdout, out.stderr


def test_dense_bf16_decoder_matches_the_sparse_one_to_bf16_rounding():
    # the GPU's tensor-core decoder (decode_for 'dense_bf16') against the float64 dense reference z @ W
    from musicsae.sae import decode_for
    torch.manual_seed(0)
    n, d, B, k = 512, 64, 96, 24
    W = torch.randn(n, d, requires_grad=True); v = torch.rand(B, k, requires_grad=True)
    idx = torch.stack([torch.randperm(n)[:k] for _ in range(B)]); g = torch.randn(B, d)
    z = torch.zeros(B, n, dtype=torch.float64).scatter(1, idx, v.detach().double()).requires_grad_()
    Wd = W.detach().double().requires_grad_()
    ref = z @ Wd; gz, gWd = torch.autograd.grad(ref, (z, Wd), g.double())
    y = decode_for(v, idx, W, decode="dense_bf16"); gv, gW = torch.autograd.grad(y, (v, W), g)
    rel = lambda a, b: float((a.double() - b).norm() / b.norm())
    assert rel(y, ref) < 8e-3 and rel(gv, gz.gather(1, idx)) < 8e-3 and rel(gW, gWd) < 8e-3
    # on a CPU 'auto' is the sparse kernel: bit for bit what it always computed
    assert torch.equal(decode_for(v, idx, W), sparse_decode(v, idx, W))
    with pytest.raises(ValueError, match="decode"): decode_for(v, idx, W, decode="dense")


def test_dead_ids_give_the_same_losses_and_gradients_as_the_dead_mask():
    sae = TopKSAE(8, 48, 3, seed=2)
    with torch.no_grad(): sae.b_enc.normal_()
    xs = torch.randn(64, 8, generator=torch.Generator().manual_seed(1))
    dead = torch.zeros(48, dtype=torch.bool); dead[::3] = True
    grads = []
    for kw in (dict(dead=dead), dict(dead=None, dead_ids=dead.nonzero().squeeze(1))):
        sae.zero_grad(); out = sae_losses(sae, xs, k_aux=5, **kw); (out["mse"] + out["aux"]).backward()
        grads.append((float(out["aux"]), sae.W_enc.grad.clone(), sae.W_dec.grad.clone()))
    assert grads[0][0] == grads[1][0] > 0
    assert torch.equal(grads[0][1], grads[1][1]) and torch.equal(grads[0][2], grads[1][2])


def test_gpu_trainer_reads_the_dead_set_every_aux_refresh_steps(monkeypatch):
    # the trainer's GPU branch, run on a CPU: the dead set is read back (a host sync on a GPU) only every
    # aux_refresh_steps steps and handed to sae_losses as ids in between
    src, _ = _data(n=3000)
    tr = Trainer(_cfg(aux_refresh_steps=4, batch_size=64), src)
    tr.lazy_dead = True                 # what a GPU trainer does; every tensor stays on the CPU
    tr.since_fired[:5] = 10**9          # five latents dead from the start
    seen = []
    real = trainer_mod.sae_losses
    def spy(*a, dead_ids=None, **kw):
        seen.append(None if dead_ids is None else dead_ids.clone()); return real(*a, dead_ids=dead_ids, **kw)
    monkeypatch.setattr(trainer_mod, "sae_losses", spy)
    x = src.splits["train"][:64]
    objs = []
    for _ in range(6): tr.train_step(x); objs.append(tr._dead_ids)
    assert all(s is not None for s in seen) and set(seen[0].tolist()) >= set(range(5))
    assert objs[0] is objs[1] is objs[2] is objs[3] and objs[4] is not objs[3]   # refreshed at step 4 only
