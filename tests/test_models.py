"MusicModel backends: delay pattern, teacher forcing against the libraries' own losses, frame alignment, demo model."
import math
import pytest
import torch
import transformers
from fastcore.test import test_fail as fails

from musicsae.models import (HFMusicGen, MusicModel, audiocraft_available, delay_inputs, load_model, tiny_hf_musicgen,
                             tiny_audiocraft_musicgen, undelay)
from musicsae.demo_model import (DemoMusicModel, MelRVQCodec, codebook_ce, demo_decoder, spectral_convergence, unigram_ce)
from musicsae.core import data_dir

transformers.logging.set_verbosity_error()
torch.set_num_threads(1)


@pytest.fixture(scope="module")
def hf():
    return tiny_hf_musicgen(seed=0)


def tiny_demo(seed=0, layers=3):
    codec = MelRVQCodec(cardinality=32)
    codec.codebooks.normal_(generator=torch.Generator().manual_seed(seed))
    lm = demo_decoder(codec, seed=seed, num_hidden_layers=layers, hidden_size=32, num_attention_heads=2, ffn_dim=64)
    return DemoMusicModel(codec, lm, device="cpu")


def test_delay_inputs_layout(hf):
    "Position p holds codebook k of frame p-1-k, pads elsewhere; BOS (= pad id) first."
    B, K, T, pad = 2, 4, 7, 64
    codes = torch.randint(0, 64, (B, K, T), generator=torch.Generator().manual_seed(0))
    ids = delay_inputs(hf.model.decoder, codes).reshape(B, K, -1)
    assert ids.shape == (B, K, T + K - 1)
    for k in range(K):
        for p in range(T + K - 1):
            t = p - 1 - k
            want = codes[:, k, t] if 0 <= t < T else torch.full((B,), pad)
            assert torch.equal(ids[:, k, p], want), (k, p)
    fails(lambda: delay_inputs(hf.model.decoder, codes[:, :, :3]), contains="at least 4 frames")


def test_undelay():
    raw = torch.arange(2 * 4 * 9).reshape(2, 4, 9)
    out = undelay(raw, 6)
    assert out.shape == (2, 4, 6) and all(torch.equal(out[:, k], raw[:, k, k:k + 6]) for k in range(4))


def test_forward_codes_equals_transformers_loss(hf):
    "Our frame-aligned CE equals transformers' own per-codebook loss on the delayed labels (pads ignored)."
    B, K, T = 2, 4, 20
    codes = torch.randint(0, 64, (B, K, T), generator=torch.Generator().manual_seed(1))
    dec = hf.model.decoder
    _, full = dec.build_delay_pattern_mask(torch.cat([torch.full((B, K, 1), 64), codes], -1).reshape(B * K, -1),
                                           pad_token_id=64, max_length=T + K)
    labels = full.reshape(B, K, -1)[:, :, 1:].permute(0, 2, 1)
    unc = hf.model.get_unconditional_inputs(B)
    with torch.no_grad():
        ref = hf.model(decoder_input_ids=full[:, :-1], encoder_outputs=unc.encoder_outputs,
                       attention_mask=unc.attention_mask, labels=labels).loss
    ours = codebook_ce(hf.forward_codes(codes), codes).mean()
    assert abs(float(ref) - float(ours)) < 1e-5, (float(ref), float(ours))


def test_residual_frame_alignment(hf):
    "Residual t is the first position that reads frame t: codebook 0 of frame t changes it, not frame t-1's."
    B, K, T, t = 1, 4, 16, 8
    g = torch.Generator().manual_seed(2)
    codes = torch.randint(0, 64, (B, K, T), generator=g)
    base = hf.residuals(codes, [1])[1]
    assert base.shape == (B, T, hf.d_model) and base.dtype == torch.float32
    c0 = codes.clone(); c0[:, 0, t] = (c0[:, 0, t] + 1) % 64
    r0 = hf.residuals(c0, [1])[1]
    assert torch.allclose(r0[:, :t], base[:, :t]) and not torch.allclose(r0[:, t], base[:, t])
    c3 = codes.clone(); c3[:, 3, t] = (c3[:, 3, t] + 1) % 64     # codebook 3 of frame t arrives 3 steps later
    r3 = hf.residuals(c3, [1])[1]
    assert torch.allclose(r3[:, :t + 3], base[:, :t + 3]) and not torch.allclose(r3[:, t + 3], base[:, t + 3])
    # causal: a shorter clip gives the same residuals on its frames
    assert torch.allclose(hf.residuals(codes[:, :, :10], [1])[1], base[:, :10], atol=1e-5)
    # padding mask zeroes the padded frames
    m = torch.ones(B, T, dtype=torch.bool); m[:, 12:] = False
    rm = hf.residuals(codes, [1], mask=m)[1]
    assert (rm[:, 12:] == 0).all() and torch.allclose(rm[:, :12], base[:, :12])


def test_hf_encode_decode_generate(hf):
    assert (hf.frame_rate, hf.sample_rate, hf.n_codebooks, hf.cardinality) == (50.0, 32000, 4, 64)
    x = torch.randn(2, 32000 + 100) * 0.1
    codes = hf.encode(x)
    assert codes.shape == (2, 4, math.ceil(x.shape[-1] / 640)) and codes.dtype == torch.long and len(codes.unique()) > 1
    assert hf.decode(codes).shape[0] == 2
    a = hf.generate(None, duration_s=0.2, seed=0)
    assert a.shape == (1, 10 * 640)
    b = hf.generate(["calm piano", "fast rock drums"], duration_s=0.2, seed=0, guidance_scale=3.0)
    assert b.shape == (2, 10 * 640) and torch.isfinite(b).all()
    assert torch.equal(hf.generate(None, duration_s=0.1, seed=3), hf.generate(None, duration_s=0.1, seed=3))


def test_bad_input(hf):
    fails(lambda: hf.forward_codes(torch.zeros(1, 3, 8, dtype=torch.long)), contains="codes must be [B, 4, T]")
    fails(lambda: hf.forward_codes(torch.full((1, 4, 8), 64)), contains="[0, 64)")
    fails(lambda: hf.residuals(torch.zeros(1, 4, 8, dtype=torch.long), [9]), contains="out of range")
    fails(lambda: load_model("nope:x"), contains="unknown model spec")


def test_codec_residual_quantiser():
    "Each extra codebook lowers the log-mel error; decode gives S = T * hop samples."
    t = torch.arange(64000) / 32000
    x = torch.stack([torch.sin(2 * math.pi * f * t) * torch.exp(-t) * 0.3 for f in (110, 220, 330, 440, 587, 660, 880, 990)])
    c = MelRVQCodec(cardinality=16)
    c.fit(torch.cat(list(c.features(x))), iters=6)
    f, codes = c.features(x), c.encode(x)
    err = [float(((f - sum(c.codebooks[j][codes[:, j]] for j in range(k))) ** 2).mean()) for k in range(1, 5)]
    assert codes.shape == (8, 4, 100) and err == sorted(err, reverse=True) and err[-1] < 0.5 * err[0]
    y = c.decode(codes[:2])
    assert y.shape == (2, 100 * 640) and spectral_convergence(x[:2], y, c) < 0.9


def test_demo_save_load_roundtrip(tmp_path):
    m = tiny_demo()
    codes = torch.randint(0, 32, (1, 4, 12), generator=torch.Generator().manual_seed(0))
    m.save(tmp_path)
    m2 = load_model(str(tmp_path), device="cpu")
    assert isinstance(m2, DemoMusicModel) and m2.n_layers == 3
    assert torch.allclose(m.forward_codes(codes), m2.forward_codes(codes), atol=2e-2)   # fp16 weights on disk
    assert torch.equal(m.codec.codebooks, m2.codec.codebooks)
    fails(lambda: DemoMusicModel.load(tmp_path / "missing"), contains="demo_config.json")


def test_unigram_ce():
    tr = [torch.tensor([[0, 0, 1, 1]])]; va = [torch.tensor([[0, 1]])]
    assert torch.allclose(unigram_ce(tr, va, 2), torch.tensor([math.log(2)]))


SHIPPED = data_dir() / "models" / "demo" / "demo_config.json"


def _demo_audio(n=6):
    "Held-out demo clips: numbers 800.. of the seed-0 generator, which the 800-clip training corpus never drew."
    from musicsae.data import render_demo_clip
    return [torch.tensor(render_demo_clip(800 + i, seed=0)[0]) for i in range(n)]


def _right_and_naive(m):
    right, naive = [], []
    for a in _demo_audio():
        codes = m.encode(a[: 32000 * 4])
        right.append(codebook_ce(m.forward_codes(codes), codes))
        with torch.no_grad():   # what forward(input_values=...) does: codes straight in, no BOS, no delay
            raw = m.lm(input_ids=codes.reshape(-1, codes.shape[-1])).logits.reshape(1, 4, codes.shape[-1], -1)
        naive.append(codebook_ce(raw[:, :, :-1], codes[:, :, 1:]))
    return torch.stack(right).mean(0), torch.stack(naive).mean(0)


@pytest.mark.skipif(not SHIPPED.exists(), reason="demo weights not shipped in data/models/demo/")
def test_demo_model_mean_ce_below_unigram():
    "Averaged over codebooks, the shipped demo model predicts unseen demo clips better than the unigram."
    right, _ = _right_and_naive(load_model("demo", device="cpu"))
    uni = torch.tensor(load_model("demo", device="cpu").meta["metrics"]["unigram_ce_per_codebook"])
    assert right.mean() < uni.mean(), (right, uni)


@pytest.mark.skipif(not SHIPPED.exists(), reason="demo weights not shipped in data/models/demo/")
def test_demo_model_beats_unigram():
    "The shipped demo model, fed correctly, predicts held-out demo audio better than each codebook's unigram."
    m = load_model("demo", device="cpu")
    assert (m.n_layers, m.n_codebooks, m.frame_rate, m.d_model) == (12, 4, 50.0, 256)
    right, _ = _right_and_naive(m)
    uni = torch.tensor(m.meta["metrics"]["unigram_ce_per_codebook"])
    assert (right < uni).all() and right.mean() < uni.mean() - 0.2, (right, uni)


@pytest.mark.xfail(strict=False, reason="known weakness (issue 3 stays open): the shipped demo model (1000 CPU steps, "
                   "held-out CE 4.80 vs unigram 5.14) is still too weak for the feed to matter: right vs naive differ by "
                   "< 0.1 nats on unseen clips, not the large gap expected of MusicGen")
@pytest.mark.skipif(not SHIPPED.exists(), reason="demo weights not shipped in data/models/demo/")
def test_demo_model_correct_feed_beats_naive():
    "On real demo audio the trained model's CE with BOS + delay is far lower than with the naive feed."
    right, naive = _right_and_naive(load_model("demo", device="cpu"))
    assert (right < naive - 0.5).all(), (right, naive)


@pytest.mark.skipif(not audiocraft_available(), reason="audiocraft extra not installed (pip install --no-deps -r requirements/audiocraft.txt)")
def test_audiocraft_backend():
    m = tiny_audiocraft_musicgen(seed=0)
    B, K, T, t = 1, 4, 12, 6
    codes = torch.randint(0, 64, (B, K, T), generator=torch.Generator().manual_seed(0))
    logits = m.forward_codes(codes)
    assert logits.shape == (B, K, T, 64)
    base = m.residuals(codes, [1])[1]
    assert base.shape == (B, T, m.d_model)
    c0 = codes.clone(); c0[:, 0, t] = (c0[:, 0, t] + 1) % 64
    r0 = m.residuals(c0, [1])[1]
    assert torch.allclose(r0[:, :t], base[:, :t], atol=1e-5) and not torch.allclose(r0[:, t], base[:, t])
    # the captured last block, through audiocraft's own output norm and heads, gives compute_predictions' logits:
    # raw position t+k predicts codebook k of frame t (position 0 = special tokens), as in transformers
    from musicsae.models import capture, add_vector
    with capture(m, [m.n_layers - 1]) as acts: ref = m.forward_codes(codes)
    h = acts[m.n_layers - 1][0]; norm = m.lm.out_norm or (lambda x: x)
    raw = torch.stack([lin(norm(h)) for lin in m.lm.linears], 1)
    assert h.shape[1] == T + 1
    for k in range(K): torch.testing.assert_close(raw[:, k, k:T], ref[:, k, :T - k], rtol=1e-5, atol=1e-5)
    assert (ref[:, 3, T - 3:] == 0).all()      # audiocraft gives no prediction for codebook k's last k frames
    with add_vector(m, 1, torch.zeros(m.d_model)): assert torch.equal(m.forward_codes(codes), ref)
    assert m.encode(torch.randn(2, 32000) * 0.1).shape == (2, 4, 25)
    assert m.generate(None, duration_s=0.2, seed=0, top_k=16).shape == (1, 0.2 * 32000)


def test_demo_generate():
    "Unconditional sampling gives exactly duration_s of audio; prompts only set the batch; CFG doubles the LM batch."
    from musicsae.models import capture
    m = tiny_demo()
    a = m.generate(None, duration_s=0.1, seed=0)
    assert a.shape == (1, 5 * 640) and torch.isfinite(a).all()
    with capture(m, [0]) as acts: b = m.generate(["ignored", "prompts"], duration_s=0.1, seed=0, guidance_scale=3.0)
    assert b.shape == (2, 5 * 640) and acts[0][0].shape[0] == 4
