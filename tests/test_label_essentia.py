"""Essentia labeler: the real Essentia call path on tiny frozen graphs with the real models' node names/shapes.

The graphs (tests/fixtures/labeling/*.pb, built once by make_fixtures.py with tensorflow-cpu) compute a closed-form
function with weights sin(f*i)/sqrt(rows) made inside the graph; here numpy recomputes it and must agree with what
Essentia's TensorflowPredictEffnetDiscogs / TensorflowPredict2D return.
"""
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from musicsae import label_essentia as le
from musicsae.audio import resample
from musicsae.core import file_sha256

FX = Path(__file__).parent / "fixtures" / "labeling"
needs_essentia = pytest.mark.skipif(not le.essentia_available(),
                                    reason="essentia-tensorflow not installed (pip install --pre essentia-tensorflow)")


def W(rows, cols, f):
    return (np.sin(f * np.arange(rows * cols, dtype=np.float32)).reshape(rows, cols) / np.sqrt(rows)).astype(np.float32)

def sigmoid(x): return 1 / (1 + np.exp(-x))

def ref_effnet_embeddings(mel_patches):        # [P, 128, 96] -> [P, 1280]
    return np.tanh(mel_patches.mean(1) @ W(96, 1280, 0.37))

def ref_genre(emb): return sigmoid(emb @ W(1280, 400, 0.07) + 0.1)
def ref_instrument(emb): return sigmoid(emb @ W(1280, 40, 0.23) - 0.2)


def fixture_tagger():
    return le.EssentiaTagger(replace(le.ESSENTIA_EFFNET, file=str(FX / "tiny-discogs-effnet-bs64.pb")),
                             {"genre": replace(le.ESSENTIA_HEADS["genre"], file=str(FX / "tiny-genre_discogs400.pb")),
                              "instrument": replace(le.ESSENTIA_HEADS["instrument"], file=str(FX / "tiny-mtg_jamendo_instrument.pb"))})


def chirp(secs=6.0, sr=16000, seed=0):
    t = np.arange(int(secs * sr)) / sr
    return (0.3 * np.sin(2 * np.pi * 440 * t * (1 + t / secs)) + 0.05 * np.random.default_rng(seed).standard_normal(t.size)).astype(np.float32)


def essentia_mel_patches(audio):
    "The mel patches Essentia feeds the effnet model: TensorflowInputMusiCNN frames (512/256), patches of 128 hop 62."
    es = le.require_essentia()
    fc, inp, mels = es.FrameCutter(frameSize=512, hopSize=256, startFromZero=False), es.TensorflowInputMusiCNN(), []
    while len(fr := fc(audio)): mels.append(inp(fr))
    mels = np.array(mels)
    return np.stack([mels[i:i + 128] for i in range(0, len(mels) - 127, 62)])


def test_fixture_graphs_are_small_and_name_the_real_nodes():
    for name in ("tiny-discogs-effnet-bs64", "tiny-genre_discogs400", "tiny-mtg_jamendo_instrument"):
        assert (FX / f"{name}.pb").stat().st_size < 10_000
    raw = (FX / "tiny-discogs-effnet-bs64.pb").read_bytes()
    assert b"serving_default_melspectrogram" in raw and b"PartitionedCall" in raw
    assert b"serving_default_model_Placeholder" in (FX / "tiny-genre_discogs400.pb").read_bytes()
    assert b"model/Sigmoid" in (FX / "tiny-mtg_jamendo_instrument.pb").read_bytes()
    assert len(le.read_classes(replace(le.ESSENTIA_HEADS["genre"], file=str(FX / "tiny-genre_discogs400.pb")))) == 400


def test_real_specs_use_the_model_zoo_names():
    assert le.ESSENTIA_EFFNET.output == "PartitionedCall:1" and le.ESSENTIA_EFFNET.file == "discogs-effnet-bs64-1.pb"
    g = le.ESSENTIA_HEADS["genre"]
    assert (g.input, g.output) == ("serving_default_model_Placeholder", "PartitionedCall:0")
    assert g.url.endswith("classification-heads/genre_discogs400/genre_discogs400-discogs-effnet-1.pb")
    for h in ("instrument", "moodtheme", "jamendo_genre"):
        assert (le.ESSENTIA_HEADS[h].input, le.ESSENTIA_HEADS[h].output) == ("model/Placeholder", "model/Sigmoid")


@needs_essentia
def test_effnet_embeddings_match_numpy():
    tagger, audio = fixture_tagger(), chirp()
    emb = tagger.embed(audio)
    ref = ref_effnet_embeddings(essentia_mel_patches(audio))
    assert emb.shape[1] == 1280 and len(ref) - 1 <= len(emb) <= len(ref)
    np.testing.assert_allclose(emb, ref[:len(emb)], atol=2e-5)


@needs_essentia
def test_heads_match_numpy_and_predict_is_patch_mean():
    tagger, audio = fixture_tagger(), chirp(seed=1)
    emb = tagger.embed(audio)
    pred = tagger.predict(audio)
    np.testing.assert_allclose(pred["genre"], ref_genre(emb).mean(0), atol=1e-5)
    np.testing.assert_allclose(pred["instrument"], ref_instrument(emb).mean(0), atol=1e-5)
    assert tagger.classes["instrument"][28] == "piano"


@needs_essentia
def test_tag_clips_resamples_and_averages_over_clips():
    tagger = fixture_tagger()
    clips16 = [chirp(3.0, seed=s) for s in range(2)]
    import soxr
    clips32 = [soxr.resample(c, 16000, 32000).astype(np.float32) for c in clips16]
    got = le.tag_clips(tagger, clips32, 32000)
    ref = np.mean([tagger.predict(resample(c, 32000, 16000))["genre"] for c in clips32], 0)
    np.testing.assert_allclose(got["genre"], ref, atol=1e-6)
    cands = le.top_tags(got, tagger.classes, n=3)
    assert len(cands) == 6 and {c["source"] for c in cands} == {"essentia:genre", "essentia:instrument"}
    g = [c["score"] for c in cands if c["source"] == "essentia:genre"]
    assert g == sorted(g, reverse=True) and abs(g[0] - got["genre"].max()) < 1e-7


@needs_essentia
def test_short_clip_is_looped_to_one_patch_and_empty_clip_fails():
    tagger = fixture_tagger()
    assert tagger.embed(chirp(0.5)).shape == (1, 1280)
    with pytest.raises(ValueError, match="empty"): tagger.embed(np.zeros(0, np.float32))


def test_missing_model_file_is_named(tmp_path):
    if not le.essentia_available(): pytest.skip("essentia-tensorflow not installed")
    with pytest.raises(FileNotFoundError, match="discogs-effnet-bs64-1.pb"):
        le.EssentiaTagger.from_dir(tmp_path)


@needs_essentia
def test_descriptors_find_key_and_tempo():
    sr, bpm = 16000, 132
    t = np.arange(6 * sr) / sr
    tri = sum(np.sin(2 * np.pi * 440 * 2 ** ((m - 69) / 12) * t) for m in (57, 60, 64)) * 0.1   # A minor triad
    click = np.zeros_like(t)
    for s in range(0, t.size, sr * 60 // bpm): click[s:s + 300] = np.hanning(600)[300:] * 0.8
    descs = [le.describe_clip((tri + click).astype(np.float32), sr) for _ in range(2)]
    assert (descs[0]["key"], descs[0]["scale"]) == ("A", "minor")
    assert abs(descs[0]["bpm"] - bpm) < 6 and -40 < descs[0]["lufs"] < 0
    cands = le.descriptor_candidates(descs)
    assert cands[0] == {"label": "A minor key", "source": "descriptor", "score": 1.0}
    assert any(c["label"] == "fast tempo" for c in cands)  # 132 BPM: the demo corpus calls ≥ 120 fast


def test_descriptor_candidates_score_agreement():
    descs = [{"key": "C", "scale": "major", "bpm": 140.0, "lufs": -10.0}] * 3 + [{"key": "G", "scale": "major", "bpm": 70.0, "lufs": -40.0}]
    assert [le.tempo_word(b) for b in (89, 90, 119, 120)] == ["slow tempo", "medium tempo", "medium tempo", "fast tempo"]
    c = {x["label"]: x["score"] for x in le.descriptor_candidates(descs)}
    assert c == {"C major key": 0.75, "major mode": 1.0, "fast tempo": 0.75, "loud": 0.75, "140 BPM": 0.75}


def test_download_verifies_recorded_checksums(tmp_path):
    (tmp_path / "a.pb").write_bytes(b"abc")
    (tmp_path / "SHA256SUMS").write_text(f"{file_sha256(tmp_path / 'a.pb')}  a.pb\n")
    assert "a.pb" in le.verify_models(tmp_path)
    (tmp_path / "a.pb").write_bytes(b"abd")
    with pytest.raises(ValueError, match="a.pb"): le.verify_models(tmp_path)
