"""The activation store: writer, index, card, readers, resume after a real kill, sharding, bad rows."""
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import soundfile as sf
import torch

from musicsae.activations import extract, manifest_hash
from musicsae.store import ActivationStore, StoreWriter, finalize, read_parts, STORE_FORMAT

torch.set_num_threads(1)
TESTS = Path(__file__).resolve().parent
ROOT = TESTS.parent


class ToyModel:
    """A causal stand-in with MusicModel's extraction API (encode, residuals), cheap and deterministic.

    Each layer mixes the running mean of earlier frames (causal, like MusicGen's decoder), so a track's
    residuals depend on its whole past but never on frames after it (or on padding)."""
    name, sample_rate, frame_rate, n_layers, d_model, n_codebooks, cardinality = "toy", 8000, 50.0, 4, 16, 2, 32
    device = torch.device("cpu")

    def __init__(self, seed=0, delay=0.0):
        g = torch.Generator().manual_seed(seed)
        self.emb = torch.randn(self.n_codebooks, self.cardinality, self.d_model, generator=g)
        self.W = torch.randn(self.n_layers, self.d_model, self.d_model, generator=g) / 4
        self.delay = delay

    def encode(self, audio):
        hop = int(self.sample_rate / self.frame_rate)
        B, T = audio.shape[0], audio.shape[-1] // hop
        fr = audio[:, : T * hop].reshape(B, T, hop)
        c0 = (fr.abs().mean(-1) * 100).long().clamp(0, self.cardinality - 1)
        c1 = ((fr[..., 0] + 1) * 16).long().clamp(0, self.cardinality - 1)
        return torch.stack([c0, c1], 1)

    def residuals(self, codes, layers, mask=None):
        time.sleep(self.delay)
        h = sum(self.emb[k][codes[:, k]] for k in range(self.n_codebooks))
        t = torch.arange(1, h.shape[1] + 1, dtype=h.dtype)[None, :, None]
        out = {}
        for l in range(max(layers) + 1):
            h = h + torch.tanh((torch.cumsum(h, 1) / t) @ self.W[l])
            if l in layers: out[l] = h.clone()
        return out


def make_corpus(folder: Path, n=10, seed=0, bad=True):
    "n clips of 8 kHz audio (varying lengths) + bad rows: missing file, corrupt file, NaN samples, too short."
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        dur = [1.0, 1.0, 0.8, 1.3][i % 4]
        t = np.arange(int(dur * 8000)) / 8000
        a = (0.3 * np.sin(2 * np.pi * (110 + 40 * i) * t) * (1 + np.sin(2 * np.pi * (i + 1) * t)) / 2 + 0.02 * rng.standard_normal(len(t)))
        sf.write(folder / f"c{i}.wav", a.astype(np.float32), 8000)
        rows.append(dict(id=f"c{i}", path=f"c{i}.wav", start=0.0, duration=dur, split=["train", "train", "val"][i % 3], labels="{}"))
    if bad:
        (folder / "corrupt.wav").write_bytes(b"RIFF not really a wav")
        sf.write(folder / "nan.wav", np.full(8000, np.nan, np.float32), 8000, subtype="FLOAT")
        sf.write(folder / "short.wav", np.zeros(800, np.float32), 8000)
        rows += [dict(id="missing", path="missing.wav", start=0.0, duration=1.0, split="train", labels="{}"),
                 dict(id="corrupt", path="corrupt.wav", start=0.0, duration=1.0, split="train", labels="{}"),
                 dict(id="nan", path="nan.wav", start=0.0, duration=1.0, split="val", labels="{}"),
                 dict(id="short", path="short.wav", start=0.0, duration=0.1, split="train", labels="{}")]
    m = pd.DataFrame(rows)
    m.to_parquet(folder / "manifest.parquet", index=False)
    return m


def sf_load(row, root, sr):
    "Plain soundfile reader (what the manifest rows point to); raises on missing/corrupt files."
    a, r = sf.read(Path(root) / row["path"], dtype="float32", always_2d=False)
    assert r == sr, (r, sr)
    return a


def reference(model, folder, manifest, layers):
    "Each good clip run alone (batch of one, no padding): what the store must hold."
    out = {}
    for row in manifest.to_dict("records"):
        try: a = sf_load(row, folder, model.sample_rate)
        except Exception: continue
        if not np.isfinite(a).all() or len(a) < 0.5 * model.sample_rate: continue
        acts = model.residuals(model.encode(torch.from_numpy(a)[None]), layers)
        out[row["id"]] = {l: acts[l][0] for l in layers}
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    folder = tmp_path_factory.mktemp("corpus")
    return folder, make_corpus(folder)


@pytest.fixture(scope="module")
def full_run(corpus, tmp_path_factory):
    "An uninterrupted extraction of the whole corpus, the reference for the other tests."
    folder, m = corpus
    out = tmp_path_factory.mktemp("full")
    res = extract(ToyModel(), m, [0, 2], out, batch_size=3, root=folder, shard_tokens=64, load=sf_load, progress=False)
    return out, res


def test_store_holds_each_track_as_run_alone(corpus, full_run):
    folder, m = corpus
    out, res = full_run
    ref = reference(ToyModel(), folder, m, [0, 2])
    assert res["complete"] and res["n_tracks"] == 10 and res["n_skipped"] == 4
    for l in (0, 2):
        s = ActivationStore(out / f"L{l}")
        assert s.layer == l and s.d_model == 16 and len(s) == 10
        assert sorted(s.track_ids()) == sorted(ref)
        for tid, r in ref.items():
            got = s.track(tid)
            assert got.dtype == torch.float32 and got.shape == r[l].shape          # T_i frames, padding dropped
            torch.testing.assert_close(got, r[l].half().float(), atol=2e-3, rtol=2e-3)
        # frames of the 1.3 s clip are 65 at 50 Hz; the 0.8 s clip 40
        assert s.track("c3").shape[0] == 65 and s.track("c2").shape[0] == 40
        assert s.n_tokens == sum(r[l].shape[0] for r in ref.values()) == s.card["n_tokens"]


def test_card_and_index(corpus, full_run):
    folder, m = corpus
    out, _ = full_run
    card = json.loads((out / "L2" / "card.json").read_text())
    assert card["format"] == STORE_FORMAT and card["model"] == "toy" and card["layer"] == 2 and card["d_model"] == 16
    assert card["frame_rate"] == 50.0 and card["dtype"] == "float16" and card["manifest_hash"] == manifest_hash(m)
    idx = pd.read_parquet(out / "L2" / "index.parquet")
    assert list(idx.columns) == ["track_id", "split", "shard", "start", "stop"]
    assert idx.split.to_dict() == idx.track_id.map(m.set_index("id").split).to_dict()   # splits from the manifest
    for shard, g in idx.groupby("shard"):                                               # rows tile each shard exactly
        g = g.sort_values("start")
        arr = np.load(out / "L2" / shard, mmap_mode="r")
        assert arr.dtype == np.float16 and g.start.iloc[0] == 0 and (g.start.values[1:] == g.stop.values[:-1]).all()
        assert g.stop.iloc[-1] == len(arr)
    assert idx.shard.nunique() > 1                                                      # small shard_tokens → several shards


def test_bad_rows_are_recorded_not_fatal(full_run):
    out, _ = full_run
    sk = pd.read_parquet(out / "L0" / "skipped.parquet").set_index("track_id").reason
    assert set(sk.index) == {"missing", "corrupt", "nan", "short"}
    assert "missing.wav" in sk["missing"] or "No such file" in sk["missing"] or "Error" in sk["missing"]
    assert "non-finite" in sk["nan"] and "too short" in sk["short"]
    s = ActivationStore(out / "L0")
    assert set(s.skipped.track_id) == set(sk.index)


def test_readers(full_run):
    out, _ = full_run
    s = ActivationStore(out / "L2")
    train = s.track_ids("train")
    all_train = torch.cat([s.track(t) for t in train])
    # iter_tracks: every train track once, same frames as track()
    seen = dict(s.iter_tracks("train"))
    assert sorted(seen) == sorted(train) and all(torch.equal(seen[t], s.track(t)) for t in train)
    # batches: one epoch is a permutation of the split's frames, in batches of the asked size
    bs = list(s.batches(7, split="train", seed=1, buffer_tokens=100))
    assert all(len(b) == 7 for b in bs[:-1]) and 0 < len(bs[-1]) <= 7
    got = torch.cat(bs)
    key = lambda x: sorted(map(tuple, x.numpy().round(4).tolist()))
    assert got.shape == all_train.shape and key(got) == key(all_train)
    assert not torch.equal(got, all_train)                                         # shuffled
    assert torch.equal(torch.cat(list(s.batches(7, seed=1, buffer_tokens=100))), got)   # seeded
    # frames from one track are spread out: the first batches mix the tracks the buffer holds (≥ 250 frames)
    first = torch.cat(list(s.batches(7, seed=1, buffer_tokens=250))[:3]); owner = {tuple(r.round(4).tolist()): t for t in train for r in s.track(t).numpy()}
    assert len({owner[tuple(r.round(4).tolist())] for r in first.numpy()}) >= 3
    # unshuffled: storage order, two epochs
    assert torch.cat(list(s.batches(8, shuffle=False, epochs=2))).shape[0] == 2 * len(all_train)
    # sample: distinct real frames of the split
    x = s.sample(50, seed=0)
    assert x.shape == (50, 16) and set(map(tuple, x.numpy().round(4).tolist())) <= set(owner)
    assert len(set(map(tuple, x.numpy().round(4).tolist()))) == 50
    with pytest.raises(KeyError, match="nope"): s.track("nope")


def test_batches_memory_is_bounded(tmp_path):
    "A store 100× the buffer: peak memory of the shuffled reader must stay near the buffer, not the store."
    import tracemalloc
    card = dict(format=STORE_FORMAT, model="toy", layer=0, d_model=64, frame_rate=50.0, dtype="float16", manifest_hash="x", n_manifest=400)
    w = StoreWriter(tmp_path / "L0", card, shard_tokens=4000)
    for i in range(400): w.add(f"t{i}", "train", np.full((500, 64), i % 100, np.float16))
    w.close()
    s = ActivationStore(tmp_path / "L0")
    assert s.n_tokens == 200_000
    tracemalloc.start()
    n = sum(len(b) for b in s.batches(256, buffer_tokens=2000))
    peak = tracemalloc.get_traced_memory()[1]; tracemalloc.stop()
    store_bytes = 200_000 * 64 * 2
    assert n == 200_000 and peak < store_bytes / 20, (peak, store_bytes)


def test_commit_waits_for_its_shard_and_overlaps_the_next_write(tmp_path, monkeypatch):
    """A shard's record is written only after the shard is fsynced and named (a crash never leaves a record without its
    shard); with the commit thread held back the writer goes on writing the next shard; a commit's error surfaces."""
    import os, threading
    events, hold = [], threading.Event()
    fsync, replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}"))), fsync(fd))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", str(b))), replace(a, b))[1])
    commit = StoreWriter._commit
    monkeypatch.setattr(StoreWriter, "_commit", lambda self, *a: (hold.wait(10), commit(self, *a))[1])
    card = dict(format=STORE_FORMAT, model="toy", layer=0, d_model=8, frame_rate=50.0, dtype="float16", manifest_hash="x", n_manifest=3)
    w = StoreWriter(tmp_path / "L0", card, shard_tokens=100)
    for i in range(3): w.add(f"t{i}", "train", np.full((100, 8), i, np.float16))   # three shards, their commits held back
    assert len(list((tmp_path / "L0" / "shards").glob(".*.tmp"))) >= 2 and not list((tmp_path / "L0" / "parts").glob("*.parquet"))
    hold.set(); card = w.close()
    assert card["n_tracks"] == 3 and card["complete"]
    for k in range(3):
        name = f"r000-{k:05d}"
        order = [i for i, (what, p) in enumerate(events) if name in p]
        kinds = [events[i][0] + (":parts" if "parts" in events[i][1] else ":shard") for i in order]
        assert kinds[:2] == ["fsync:shard", "replace:shard"] and kinds[-1] == "replace:parts", kinds
    assert [float(ActivationStore(tmp_path / "L0").track(f"t{i}")[0, 0]) for i in range(3)] == [0.0, 1.0, 2.0]
    hold.clear(); w2 = StoreWriter(tmp_path / "L1", {**card, "layer": 1}, shard_tokens=100)
    w2.add("t0", "train", np.zeros((100, 8), np.float16))
    import shutil; shutil.rmtree(tmp_path / "L1" / "parts")                 # the commit thread cannot write the record
    hold.set()
    with pytest.raises(OSError): w2.close()


def test_refuses_other_manifest_or_model(corpus, full_run):
    folder, m = corpus
    out, _ = full_run
    with pytest.raises(ValueError, match="manifest_hash"):
        extract(ToyModel(), m.iloc[:5], [0], out, root=folder, load=sf_load, progress=False)
    with pytest.raises(ValueError, match="out of range"):
        extract(ToyModel(), m, [7], out, root=folder, load=sf_load, progress=False)


def test_refuses_other_weights(tmp_path):
    "Resuming with a model of the same name but other weights (e.g. retrained) is an error, not a mixed store."
    man_path = make_corpus_32k(tmp_path / "corpus", n=2)
    extract(tiny_demo_model(seed=0), man_path, [1], tmp_path / "acts", progress=False)
    with pytest.raises(ValueError, match="model_fingerprint"):
        extract(tiny_demo_model(seed=1), man_path, [1], tmp_path / "acts", progress=False)
    assert extract(tiny_demo_model(seed=0), man_path, [1], tmp_path / "acts", progress=False)["extracted"] == 0


_RUN = """
import sys; sys.path.insert(0, {tests!r})
import pandas as pd, torch; torch.set_num_threads(1)
from test_activations import ToyModel, sf_load
from musicsae.activations import extract
m = pd.read_parquet({manifest!r})
extract(ToyModel(delay={delay}), m, [0, 2], {out!r}, batch_size=2, root={root!r}, shard={shard!r}, shard_tokens=1,
        load=sf_load, progress=False)
"""


def _spawn(folder, out, shard="0/1", delay=0.0):
    code = _RUN.format(tests=str(TESTS), manifest=str(folder / "manifest.parquet"), root=str(folder), out=str(out),
                       shard=shard, delay=delay)
    return subprocess.Popen([sys.executable, "-c", code], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)


def _compare_stores(a: Path, b: Path):
    for l in (0, 2):
        sa, sb = ActivationStore(a / f"L{l}"), ActivationStore(b / f"L{l}")
        parts = read_parts(b / f"L{l}")
        assert not parts.track_id.duplicated().any()                               # no track committed twice
        assert sorted(sa.track_ids()) == sorted(sb.track_ids())                    # none missing
        assert sorted(sa.skipped.track_id) == sorted(sb.skipped.track_id)
        for t in sa.track_ids(): torch.testing.assert_close(sa.track(t), sb.track(t), atol=2e-3, rtol=2e-3)
        assert sb.card["complete"] and sb.card["n_tokens"] == sa.card["n_tokens"]
        on_disk = {f"shards/{p.name}" for p in (b / f"L{l}" / "shards").iterdir()}
        assert on_disk == set(sb.index.shard)                                      # no orphan or temp files left


def test_resume_after_sigkill(corpus, full_run, tmp_path):
    "Kill a real extraction process mid-way (SIGKILL: no cleanup), resume it, compare with the uninterrupted run."
    folder, m = corpus
    out = tmp_path / "killed"
    p = _spawn(folder, out, delay=0.4)
    deadline = time.time() + 60
    while time.time() < deadline and len(list((out / "L2" / "parts").glob("*.parquet"))) < 2: time.sleep(0.05)
    p.send_signal(signal.SIGKILL); p.wait()
    assert p.returncode == -signal.SIGKILL
    done = read_parts(out / "L2")
    assert 0 < len(done) < len(m)                                                  # it really stopped half-way
    assert not (out / "L2" / "index.parquet").exists() or not json.loads((out / "L2" / "card.json").read_text())["complete"]
    res = extract(ToyModel(), m, [0, 2], out, batch_size=3, root=folder, shard_tokens=64, load=sf_load, progress=False)
    assert res["extracted"] + res["skipped"] < len(m)                              # it did not start over
    _compare_stores(full_run[0], out)
    again = extract(ToyModel(), m, [0, 2], out, root=folder, load=sf_load, progress=False)
    assert again["extracted"] == again["skipped"] == 0                             # a finished store is left alone


def test_two_processes_fill_one_store(corpus, full_run, tmp_path):
    "Two ranks run at the same time (as under torchrun) and write disjoint shards of one store."
    folder, m = corpus
    out = tmp_path / "sharded"
    ps = [_spawn(folder, out, shard=f"{i}/2") for i in range(2)]
    for p in ps: assert p.wait(timeout=120) == 0, p.stdout.read().decode()[-2000:]
    shards = set(pd.read_parquet(out / "L0" / "index.parquet").shard)
    assert {s.split("/")[1][:4] for s in shards} == {"r000", "r001"}
    _compare_stores(full_run[0], out)


def test_torchrun_env(corpus, tmp_path, monkeypatch):
    "Without an explicit shard, RANK/WORLD_SIZE pick the rows."
    folder, m = corpus
    monkeypatch.setenv("RANK", "1"); monkeypatch.setenv("WORLD_SIZE", "3")
    res = extract(ToyModel(), m, [1], tmp_path, shard=None, root=folder, load=sf_load, progress=False)
    assert (res["rank"], res["world_size"]) == (1, 3)
    assert sorted(read_parts(tmp_path / "L1").track_id) == sorted(m.id.iloc[1::3]) and not res["complete"]


# --- the real models: the demo architecture (mel-RVQ codec + MusicgenForCausalLM) and transformers' MusicGen ---

def tiny_demo_model(seed=0, device="cpu"):
    "The demo model's classes at toy size, random LM weights, codec fitted on a few random-ish frames."
    from musicsae.demo.model import MelRVQCodec, demo_decoder, DemoMusicModel
    torch.manual_seed(seed)
    codec = MelRVQCodec(n_mels=32, cardinality=32)
    g = torch.Generator().manual_seed(seed)
    codec.fit(torch.randn(400, 32, generator=g) * 3 - 4, iters=3)
    lm = demo_decoder(codec, seed=seed, num_hidden_layers=4, hidden_size=32, num_attention_heads=2, ffn_dim=64,
                      max_position_embeddings=256)
    return DemoMusicModel(codec, lm, name="tiny-demo", device=device)


def tiny_hf_musicgen(seed=0):
    "transformers' MusicgenForConditionalGeneration (T5 + EnCodec + decoder) from a toy config, random weights (4 codebooks of 64)."
    from transformers import MusicgenConfig, MusicgenForConditionalGeneration, T5Config, EncodecConfig, MusicgenDecoderConfig
    from musicsae.models import HFMusicGen
    torch.manual_seed(seed)
    t5 = T5Config(vocab_size=64, d_model=16, d_kv=4, d_ff=32, num_layers=1, num_heads=2)
    enc = EncodecConfig(hidden_size=8, num_filters=4, num_residual_layers=1, upsampling_ratios=[8, 5, 4, 4], codebook_size=64,
                        codebook_dim=8, sampling_rate=32000, target_bandwidths=[1.2], audio_channels=1, chunk_length_s=None, overlap=None)
    dec = MusicgenDecoderConfig(vocab_size=64, pad_token_id=64, bos_token_id=64, hidden_size=32, num_hidden_layers=4,
                                num_attention_heads=2, ffn_dim=64, num_codebooks=4, max_position_embeddings=256)
    m = MusicgenForConditionalGeneration(MusicgenConfig(text_encoder=t5.to_dict(), audio_encoder=enc.to_dict(), decoder=dec.to_dict())).eval()
    for layer in m.audio_encoder.quantizer.layers:   # zero-initialised codebooks would give one code for everything
        layer.codebook.embed.normal_(); layer.codebook.embed_avg.copy_(layer.codebook.embed)
    for c in (m.config, m.generation_config): c.decoder_start_token_id = c.pad_token_id = c.bos_token_id = 64
    return HFMusicGen(m, name="tiny-hf", device="cpu")


def make_corpus_32k(folder: Path, n=5, seed=0):
    "Clips of 32 kHz audio of different lengths, a manifest written with musicsae.data, and one missing file."
    from musicsae.data import write_manifest
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    rows = []
    for i in range(n):
        dur = [1.0, 1.5, 1.0, 0.8, 1.5][i % 5]
        t = np.arange(int(dur * 32000)) / 32000
        a = 0.3 * np.sin(2 * np.pi * (220 * (i + 1)) * t * (1 + 0.2 * t)) + 0.05 * rng.standard_normal(len(t))
        sf.write(folder / f"c{i}.wav", a.astype(np.float32), 32000)
        rows.append(dict(id=f"c{i}", path=f"c{i}.wav", start=0.0, duration=dur, split="train" if i % 4 else "val", labels="{}"))
    rows.append(dict(id="gone", path="gone.wav", start=0.0, duration=1.0, split="train", labels="{}"))
    write_manifest(pd.DataFrame(rows), folder / "manifest.parquet")
    return folder / "manifest.parquet"


@pytest.mark.parametrize("build", [tiny_demo_model, tiny_hf_musicgen], ids=["demo-arch", "hf-musicgen"])
def test_real_model_store_equals_residuals_of_each_clip(build, tmp_path):
    "Batched, padded extraction through the real backends == model.residuals on each clip alone; bad row recorded."
    from musicsae.data import read_manifest, load_clip
    model = build()
    man_path = make_corpus_32k(tmp_path / "corpus")
    res = extract(model, man_path, [1, 3], tmp_path / "acts", batch_size=4, progress=False)
    assert res["complete"] and res["n_tracks"] == 5 and res["n_skipped"] == 1
    m = read_manifest(man_path)
    for l in (1, 3):
        s = ActivationStore(tmp_path / "acts" / f"L{l}")
        assert s.card["model"] == model.name and s.d_model == 32 and s.card["frame_rate"] == 50.0
        assert "gone.wav" in s.skipped.set_index("track_id").reason["gone"]
        for row in m[m.id != "gone"].to_dict("records"):
            a = torch.from_numpy(load_clip(row, man_path.parent))
            ref = model.residuals(model.encode(a[None]), [l])[l][0]
            got = s.track(row["id"])
            assert got.shape == ref.shape and abs(got.shape[0] - row["duration"] * 50) <= 1
            torch.testing.assert_close(got, ref.half().float(), atol=5e-3, rtol=5e-3)


def test_cli_two_shards_then_resume(tmp_path):
    "python -m musicsae.activations with --shard 0/2 and 1/2 (a saved model folder) fills one complete store."
    model = tiny_demo_model()
    model.save(tmp_path / "model")
    man_path = make_corpus_32k(tmp_path / "corpus")
    cmd = [sys.executable, "-m", "musicsae.activations", "--model", str(tmp_path / "model"), "--manifest", str(man_path),
           "--layers", "0,2", "--out", str(tmp_path / "acts"), "--batch-size", "2", "--device", "cpu"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    ps = [subprocess.Popen(cmd + ["--shard", f"{i}/2"], cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT) for i in range(2)]
    outs = [p.communicate(timeout=240)[0].decode() for p in ps]
    assert all(p.returncode == 0 for p in ps), outs
    s = ActivationStore(tmp_path / "acts" / "L2")
    assert s.card["complete"] and len(s) == 5 and list(s.skipped.track_id) == ["gone"]
    from musicsae.models import load_model
    again = extract(load_model(str(tmp_path / "model"), device="cpu"), man_path, [0, 2], tmp_path / "acts", progress=False)
    assert again["extracted"] == again["skipped"] == 0 and again["complete"]      # resumed: nothing left to do
    a = torch.from_numpy(sf.read(man_path.parent / "c1.wav", dtype="float32")[0])
    torch.testing.assert_close(s.track("c1"), model.residuals(model.encode(a[None]), [2])[2][0].half().float(), atol=5e-3, rtol=5e-3)


def test_worker_runs_in_order_and_reraises():
    from musicsae.store import Worker
    seen = []
    with Worker() as w:
        for i in range(20): w(seen.append, i)
        w.join()
    assert seen == list(range(20))
    def boom(): raise OSError("disk full")
    with pytest.raises(OSError, match="disk full"):
        with Worker() as w:
            w(boom); w.join()


def test_sync_and_async_writing_agree(corpus, full_run, tmp_path):
    folder, m = corpus
    extract(ToyModel(), m, [0, 2], tmp_path, batch_size=3, root=folder, shard_tokens=64, load=sf_load, progress=False,
            async_write=False, load_workers=0)
    _compare_stores(full_run[0], tmp_path)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a GPU")
def test_cuda_extraction_equals_residuals(tmp_path):
    "On a GPU (fp16 copies on a side stream into pinned memory, one writer thread per layer) the store is exact."
    rng = np.random.default_rng(0)
    durs = [1.0, 1.5, 0.8, 1.0, 1.5, 2.0, 1.0, 0.6, 1.2]
    clips = {f"c{i}": (0.3 * rng.standard_normal(int(32000 * d))).astype(np.float32) for i, d in enumerate(durs)}
    m = pd.DataFrame({"id": list(clips), "path": list(clips), "start": 0.0, "duration": durs, "split": "train"})
    model = tiny_demo_model(device="cuda")
    extract(model, m, [1, 3], tmp_path, batch_size=3, load=lambda row, root, sr: clips[row["id"]], shard_tokens=100,
            progress=False)
    for l in (1, 3):
        s = ActivationStore(tmp_path / f"L{l}")
        assert s.card["complete"] and len(s) == len(clips) and s.index.shard.nunique() > 2
        for tid, a in clips.items():
            ref = model.residuals(model.encode(torch.from_numpy(a)[None].cuda()), [l])[l][0].cpu()
            torch.testing.assert_close(s.track(tid), ref.half().float(), atol=5e-3, rtol=5e-3)


def test_fingerprint_sees_the_codec_not_only_the_blocks():
    "A new codec changes every code and activation: a store made with the old one must not be resumed (seen in the smoke run)."
    from musicsae.activations import model_fingerprint
    from musicsae.models import tiny_hf_musicgen
    a, b = tiny_hf_musicgen(seed=0), tiny_hf_musicgen(seed=0)
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad(): b.model.audio_encoder.quantizer.layers[0].codebook.embed.mul_(1.5)   # a buffer, not a parameter
    assert model_fingerprint(a) != model_fingerprint(b)


@pytest.mark.parametrize("build", [tiny_demo_model, tiny_hf_musicgen], ids=["demo-arch", "hf-musicgen"])
def test_block_outputs_are_residuals_in_fp16_and_stop_at_the_deepest_layer(build):
    "Defect covered: extraction ran the blocks above the deepest stored layer and the heads, and copied each output 3 times."
    from musicsae.activations import block_outputs, _pad_codes
    model = build()
    g = torch.Generator().manual_seed(1)
    codes = [torch.randint(0, model.cardinality, (model.n_codebooks, T), generator=g) for T in (40, 23, 40)]
    x, mask, lens = _pad_codes(codes)
    calls = []
    h = model.layers[3].register_forward_hook(lambda *a: calls.append(1))
    try: got = block_outputs(model, x, [2, 0], mask=mask)
    finally: h.remove()
    assert calls == [] and sorted(got) == [0, 2]          # block 3 (and the heads after it) never ran
    ref = model.residuals(x, [0, 2], mask=mask)
    for l in (0, 2):
        assert got[l].dtype == torch.float16 and got[l].shape == ref[l].shape
        for i, L in enumerate(lens):                       # bit-identical on the frames that are stored
            assert torch.equal(got[l][i, :L], ref[l][i, :L].half())


def test_to_host_checks_only_the_stored_frames():
    "Defect covered: finiteness must ignore padding (no longer zeroed) but still catch non-finite stored frames."
    from musicsae.activations import to_host
    h = torch.randn(3, 6, 4)
    h[0, 5] = float("nan")          # in track 0's padding (length 4): kept
    h[1, 1, 2] = float("inf")       # in track 1's frames: skipped
    h[2, 0, 0] = 1e6                # overflows fp16: skipped
    out, fin = to_host(h, [4, 6, 6])()
    assert fin == [True, False, False] and out.dtype == torch.float16
    torch.testing.assert_close(out, h.half(), rtol=0, atol=0, equal_nan=True)
    assert to_host(h)()[1] == [False, False, False]   # without lengths every frame counts


def test_store_cards_hash_once_and_equal_store_card(monkeypatch):
    "Defect covered: the weights were hashed once per layer; the shared cards must still equal store_card's."
    import musicsae.activations as A
    model = tiny_demo_model()
    man = pd.DataFrame({"id": ["a", "b"], "path": ["a", "b"], "start": 0.0, "duration": 1.0, "split": "train"})
    ref = {l: A.store_card(model, l, man) for l in (0, 2, 3)}
    n = []
    real = A.model_fingerprint
    monkeypatch.setattr(A, "model_fingerprint", lambda m: n.append(1) or real(m))
    assert A.store_cards(model, [0, 2, 3], man) == ref and len(n) == 1
