"""The paper-smoke assets (tools/paper_smoke.py): the parameter file mirrors paper_mgl.yaml, the saved tiny MusicGen
loads from a repo-relative folder with its tokenizer, the MusicSet-layout corpus, the Essentia layout, and the Gemini
stand-in served by the CLI answering a real google-genai request from the request's audio."""
import importlib.util
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("paper_smoke", ROOT / "tools" / "paper_smoke.py")
ps = importlib.util.module_from_spec(spec); spec.loader.exec_module(ps)

torch.set_num_threads(1)


def load_yaml(name):
    return yaml.safe_load((ROOT / "params" / name).read_text())


def test_smoke_yaml_has_every_paper_key_in_order():
    "Every key of paper_mgl.yaml, same order; only sizes and locations differ, every other value is the paper's."
    paper, smoke = load_yaml("paper_mgl.yaml"), load_yaml("paper_smoke.yaml")
    assert [k for k in smoke if k in paper] == list(paper)
    sizes_and_places = {"model", "manifest_path", "device", "batch_size", "sae_ks", "sae_batch_size", "n_examples",
                        "essentia_models", "gemini_models", "clap_model", "steer_sae_ids", "steer_n_features",
                        "steer_duration_s", "steer_judge", "n_threads", "items_per_method", "participants_per_method",
                        "bench_per_family", "bench_max_frames", "bench_epochs"}
    assert {k: smoke[k] for k in paper if k not in sizes_and_places} == {k: paper[k] for k in paper if k not in sizes_and_places}
    assert smoke["steer_text"] == "Simple melody" and len(smoke["gemini_models"].split(",")) == 1
    assert smoke["model"].startswith("hf:") and not Path(smoke["model"][3:]).is_absolute()
    # steering uses the paper's relative depths: 24/36/46 of 48 blocks are 6/9/10 of the smoke model's 12
    from musicsae.core import paper_layers
    lay = lambda ids: [int(i.split("_")[0][1:]) for i in ids]
    rel = {l: j for j, l in enumerate(paper_layers(48))}
    assert [paper_layers(ps.MUSICGEN["n_layers"])[rel[l]] for l in lay(paper["steer_sae_ids"])] == lay(smoke["steer_sae_ids"])
    assert [i.split("_", 1)[1].replace("k8", "k32").replace("k16", "k100") for i in smoke["steer_sae_ids"]] == \
           [i.split("_", 1)[1] for i in paper["steer_sae_ids"]]


@pytest.fixture(scope="module")
def assets(tmp_path_factory):
    "Every asset made by prepare() in a scratch repository root (4 corpus clips instead of 40), and prepare's 2nd run."
    root = tmp_path_factory.mktemp("smoke_root")
    params = {**load_yaml("paper_smoke.yaml"), "model": f"hf:{root}/data/smoke/musicgen",
              "manifest_path": f"{root}/data/smoke/musicset/manifest.parquet",
              "essentia_models": f"{root}/data/smoke/essentia", "clap_model": f"{root}/data/smoke/clap",
              "steer_judge": f"{root}/data/smoke/clap"}
    mp = pytest.MonkeyPatch()
    mp.setitem(ps.CORPUS, "n_clips", 4)
    loc = ps.prepare(params, quiet=True)
    stamps = {k: (loc[k] / "smoke.json").stat().st_mtime_ns for k in ("musicgen", "musicset", "essentia", "clap")}
    ps.prepare(params, quiet=True)
    again = {k: (loc[k] / "smoke.json").stat().st_mtime_ns for k in stamps}
    yield root, loc, params, stamps, again
    mp.undo()


def test_prepare_is_idempotent(assets):
    root, loc, params, stamps, again = assets
    assert stamps == again                                      # nothing remade
    assert not list(loc["musicgen"].parent.glob("*.tmp")) and not list(loc["musicgen"].parent.glob("*.old"))
    (loc["essentia"] / "smoke.json").write_text("{}")           # another recipe: remade
    ps.prepare(params, quiet=True)
    assert json.loads((loc["essentia"] / "smoke.json").read_text())["asset"] == "essentia"


def test_saved_musicgen_loads_from_a_repo_relative_folder(assets, monkeypatch):
    """load_model('hf:data/smoke/musicgen') from nbs/ (papermill's cwd) loads the saved weights and tokenizer; its
    residuals at the paper's layers equal transformers' output_hidden_states; text prompts condition CFG generation."""
    from musicsae.core import paper_layers
    from musicsae.models import HFMusicGen, delay_inputs, load_model, tiny_hf_musicgen
    root = assets[0]
    monkeypatch.setenv("MUSICSAE_ROOT", str(root))
    (root / "nbs").mkdir(exist_ok=True); monkeypatch.chdir(root / "nbs")
    m = load_model("hf:data/smoke/musicgen", device="cpu")
    assert isinstance(m, HFMusicGen) and m.tokenizer is not None
    assert (m.n_layers, m.d_model, m.n_codebooks, m.frame_rate) == (12, 64, 4, 50.0)
    ref = ps.smoke_musicgen()
    sd, rd = m.model.state_dict(), ref.model.state_dict()
    assert sd.keys() == rd.keys() and all(torch.equal(sd[k], rd[k]) for k in rd)
    # the codebooks are fitted to audio: random ones gave every clip the same 2 codes, and no SAE feature could be selective
    from musicsae.audio import SR
    from musicsae.demo.corpus import render_demo_clip
    x = torch.from_numpy(render_demo_clip(3, 7, SR, clip_s=(4.0, 4.0))[0])[None]
    assert len(m.encode(x)[0, 0].unique()) >= 10
    layers = paper_layers(m.n_layers)
    assert layers == [2, 3, 6, 9, 10]
    codes = torch.randint(0, m.cardinality, (2, 4, 20), generator=torch.Generator().manual_seed(0))
    res = m.residuals(codes, layers)
    unc = m.model.get_unconditional_inputs(2)
    with torch.no_grad():
        hs = m.model(decoder_input_ids=delay_inputs(m.model.decoder, codes), encoder_outputs=unc.encoder_outputs,
                     attention_mask=unc.attention_mask, output_hidden_states=True).decoder_hidden_states
    for l in layers: torch.testing.assert_close(res[l], hs[l + 1][:, 1:21], rtol=1e-5, atol=1e-6)
    # the text prompt reaches the decoder (the tokenizer knows the words; the logits depend on them) ...
    ids = delay_inputs(m.model.decoder, codes[:1])
    def logits(prompt):
        inp = m.tokenizer([prompt], return_tensors="pt")
        assert (inp["input_ids"] != m.tokenizer.unk_token_id).all()
        with torch.no_grad(): return m.model(**inp, decoder_input_ids=ids).logits
    assert (logits("piano melody") - logits("drums")).abs().max() > 1e-3
    # ... and CFG generation from a text prompt runs (seeded: the same prompt and seed give the same audio)
    a, a2 = (m.generate(["Simple melody"], duration_s=0.2, seed=0, guidance_scale=3.0) for _ in range(2))
    assert a.shape == (1, int(0.2 * m.sample_rate)) and torch.isfinite(a).all() and torch.equal(a, a2)


def test_musicset_corpus(assets):
    "metadata.jsonl in MusicSet's fields and the manifest build_musicset_manifest made from it: the rendered demo clips."
    from musicsae.audio import SR
    from musicsae.data import load_clip, read_manifest
    from musicsae.demo.corpus import demo_caption, render_demo_clip
    root, loc = assets[:2]
    recs = [json.loads(l) for l in (loc["musicset"] / "metadata.jsonl").read_text().splitlines()]
    assert [set(r) >= {"audio", "caption", "source"} for r in recs] == [True] * 4
    man = read_manifest(loc["manifest"])
    assert len(man) == 4 and (man["duration"] == 10.0).all() and list(man["split"]) == [r["split"] for r in recs]
    x, labels = render_demo_clip(2, 0, SR, clip_s=(10.0, 10.0))
    assert json.loads(man["labels"][2])["caption"] == recs[2]["caption"] == demo_caption(labels)
    y = load_clip(man.iloc[2], loc["musicset"])
    assert np.abs(y - x[:len(y)]).max() < 1e-4 and len(y) == len(x)          # 16-bit WAV of the rendered clip


def test_essentia_layout_matches_the_fixture_graphs(assets):
    "EssentiaTagger.from_dir with its default heads runs on the smoke folder and gives the fixture graphs' outputs."
    pytest.importorskip("essentia")
    from musicsae.label_essentia import ESSENTIA_EFFNET, ESSENTIA_HEADS, EssentiaTagger, ModelSpec, essentia_available, verify_models
    if not essentia_available(): pytest.skip("essentia-tensorflow not installed")
    loc = assets[1]
    assert len(verify_models(loc["essentia"])) == 8
    tagger = EssentiaTagger.from_dir(loc["essentia"])          # genre, instrument, moodtheme
    fx = ps.FIXTURES
    at = lambda s, name: ModelSpec(str(fx / f"{name}.pb"), s.input, s.output)
    ref = EssentiaTagger(at(ESSENTIA_EFFNET, "tiny-discogs-effnet-bs64"),
                         {"genre": at(ESSENTIA_HEADS["genre"], "tiny-genre_discogs400"),
                          "instrument": at(ESSENTIA_HEADS["instrument"], "tiny-mtg_jamendo_instrument")})
    audio = (0.3 * np.sin(2 * np.pi * 440 * np.arange(3 * 16000) / 16000)).astype(np.float32)
    p, r = tagger.predict(audio), ref.predict(audio)
    assert set(p) == {"genre", "instrument", "moodtheme"}
    np.testing.assert_allclose(p["genre"], r["genre"], rtol=1e-5); np.testing.assert_allclose(p["instrument"], r["instrument"], rtol=1e-5)
    np.testing.assert_allclose(p["moodtheme"], r["instrument"], rtol=1e-5)    # the moodtheme stand-in is the instrument graph
    assert len(tagger.classes["moodtheme"]) == len(p["moodtheme"]) and len(set(tagger.classes["moodtheme"])) == len(p["moodtheme"])


def test_tiny_clap_scores_from_its_folder(assets):
    "The CLAP folder loads with ClapScorer (clap_model and steer_judge) and scores the steering prompt."
    from musicsae.label_clap import ClapScorer, clap_scores
    loc = assets[1]
    sc = ClapScorer(str(loc["clap"]))
    clips = [(0.3 * np.sin(2 * np.pi * f * np.arange(16000) / 16000)).astype(np.float32) for f in (220, 880)]
    s = clap_scores(sc, clips, 16000, ["Simple melody", "drums"])
    assert s.shape == (2, 2) and np.isfinite(s).all() and np.abs(s).max() <= 1.0 + 1e-5


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0)); return s.getsockname()[1]


def test_serve_answers_a_real_client_from_the_audio(tmp_path, monkeypatch):
    "`paper_smoke.py serve` answers the google-genai client with a schema-valid label computed from the sent audio."
    pytest.importorskip("google.genai")
    from musicsae import label_gemini as lg
    port, log = free_port(), tmp_path / "requests.jsonl"
    proc = subprocess.Popen([sys.executable, str(ROOT / "tools" / "paper_smoke.py"), "serve", "--port", str(port), "--log", str(log)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        line = proc.stdout.readline()
        assert f"127.0.0.1:{port}" in line, line
        monkeypatch.setenv("GEMINI_API_KEY", "paper-smoke-test-key")
        monkeypatch.setenv(lg.BASE_URL_ENV, f"http://127.0.0.1:{port}")
        g = lg.GeminiLabeler("gemini-1.5-flash", cache_dir=tmp_path / "cache", backoff_s=0.01)
        sr, t = 16000, np.arange(16000) / 16000
        clips = [(0.02 * np.sin(2 * np.pi * 100 * t)).astype(np.float32), (0.6 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)]
        recs = [g.label(lg.concat_clips([c, c], sr), sr) for c in clips]
    finally:
        proc.terminate(); proc.wait(10)
    assert [r["status"] for r in recs] == ["ok", "ok"]
    labs = [lg.ConceptLabels.model_validate(r["labels"]) for r in recs]
    assert labs[0].overall_name != labs[1].overall_name
    for r, c in zip(recs, clips): assert r["labels"] == lg.audio_concepts(lg.wav_bytes(lg.concat_clips([c, c], sr), sr))
    lines = [json.loads(l) for l in log.read_text().splitlines()]
    assert [l["model"] for l in lines] == ["gemini-1.5-flash"] * 2 and all(l["code"] == 200 for l in lines)
    assert "paper-smoke-test-key" not in log.read_text()
