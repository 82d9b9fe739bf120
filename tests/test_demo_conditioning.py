"""The demo model conditioned like MusicGen (musicsae.demo.conditioning, issue 14): tags from labels and prompts, the
tag encoder's states, cross-attention that learns what only the condition says, files, CFG generation, and training
with condition dropout and early stopping — on tiny models the tests build."""
from pathlib import Path

import numpy as np
import pytest
import torch

from musicsae.demo.conditioning import TagEncoder, cfg_states, clip_tags, drop_conditions, prompt_tags, tag_vocab
from musicsae.demo.model import DemoMusicModel, tiny_demo_model, train_demo_model
from musicsae.models import delay_inputs, frame_ce, undelay

torch.set_num_threads(1)


def _conditioned(seed=0, d=32):
    m = tiny_demo_model(seed=seed, n_layers=2, d_model=d)
    return DemoMusicModel(m.codec, m.lm, tags=TagEncoder(d, seed=seed))


def test_tags_from_labels_and_prompts():
    assert len(tag_vocab()) == len(set(tag_vocab())) == 50
    assert clip_tags({"instrument": "piano", "tempo": 138, "meter": "3/4", "key": "D", "mode": "minor",
                      "chord_quality": float("nan"), "register": None}) == \
        ["instrument=piano", "tempo=fast", "meter=3/4", "key=D", "mode=minor"]
    assert prompt_tags("Simple melody") == ["texture=melody"]
    assert prompt_tags("fast arpeggio on synth lead in D minor, 3/4") == \
        ["instrument=synth_lead", "texture=arpeggio", "tempo=fast", "meter=3/4", "key=D", "mode=minor"]
    assert prompt_tags("a piano in C# major") == ["instrument=piano", "key=C#", "mode=major"]   # "a" is no key, C# is not C
    assert prompt_tags("") == prompt_tags(None) == prompt_tags("birdsong") == []


def test_tag_encoder_puts_null_first_and_masks_the_padding():
    enc = TagEncoder(8)
    st, m = enc([["instrument=piano", "tempo=fast"], [], ["not=a_tag"]])
    assert st.shape == (3, 3, 8) and m.tolist() == [[1, 1, 1], [1, 0, 0], [1, 0, 0]]
    assert torch.equal(st[:, 0], enc.emb[0].expand(3, 8))                     # every row begins with null
    assert torch.equal(st[0, 1], enc.emb[enc.index["instrument=piano"]]) and st[1:, 1:].abs().sum() == 0
    s2, m2 = cfg_states(enc, [["tempo=fast"]], guidance=True)                # conditional half, then null half
    assert m2.tolist() == [[1, 1], [1, 0]] and torch.equal(s2[1, 0], enc.emb[0])
    g = lambda: torch.Generator().manual_seed(3)
    d = drop_conditions([["a"]] * 1000, 0.15, g())
    assert d == drop_conditions([["a"]] * 1000, 0.15, g()) and 100 < sum(x == [] for x in d) < 200


def test_cross_attention_learns_what_only_the_condition_says():
    # frame 0's codes are the class, every later frame is noise: only the tags can tell frame 0
    torch.manual_seed(0)
    m = _conditioned(); m.lm.train()
    opt = torch.optim.AdamW(list(m.lm.parameters()) + list(m.tags.parameters()), lr=3e-3)
    g = torch.Generator().manual_seed(0)
    def batch(n):
        cls = torch.randint(2, (n,), generator=g)
        x = torch.randint(32, (n, 4, 8), generator=g); x[:, :, 0] = cls[:, None]
        return x, [["instrument=piano"] if c else ["instrument=organ"] for c in cls.tolist()]
    ce0 = lambda x, c: frame_ce(undelay(m._delayed_forward(delay_inputs(m.lm, x), c), 8), x)[:, :, 0].mean()
    for _ in range(150):
        x, c = batch(16); loss = ce0(x, c); opt.zero_grad(); loss.backward(); opt.step()
    m.lm.eval(); x, c = batch(64)
    wrong = [["instrument=organ"] if t == ["instrument=piano"] else ["instrument=piano"] for t in c]
    with torch.no_grad(): right, bad = float(ce0(x, c)), float(ce0(x, wrong))
    assert right < 0.1 < np.log(2) < bad


def test_conditioned_model_files_forward_and_cfg_generation(tmp_path):
    m = _conditioned(seed=1)
    with torch.no_grad():
        m.tags.emb.add_(1.0); [l.encoder_attn.v_proj.weight.mul_(20) for l in m.lm.model.decoder.layers]  # a visible condition
        for p in [*m.lm.parameters(), *m.tags.parameters()]: p.copy_(p.half().float())   # as saved (fp16)
    codes = torch.randint(32, (2, 4, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        null = m.forward_codes(codes)
        explicit = undelay(m._delayed_forward(delay_inputs(m.lm, codes), [[], []]), 12).float()
        tagged = undelay(m._delayed_forward(delay_inputs(m.lm, codes), [["instrument=piano"]] * 2), 12).float()
    assert torch.equal(null, explicit) and not torch.allclose(null, tagged, atol=1e-3)   # teacher-forced = null condition
    m.save(tmp_path / "demo")
    back = DemoMusicModel.load(tmp_path / "demo", device="cpu")
    assert back.tags is not None and back.tags.vocab == m.tags.vocab
    with torch.no_grad(): torch.testing.assert_close(back.forward_codes(codes), null)
    # prompts condition generation; CFG doubles the batch (conditional half, null half) inside transformers
    a = back.generate(["piano arpeggio", "Simple melody"], duration_s=0.2, guidance_scale=3.0, seed=0)
    b = back.generate(["piano arpeggio", "Simple melody"], duration_s=0.2, guidance_scale=3.0, seed=0)
    u = back.generate(None, duration_s=0.2, batch_size=2, seed=0)
    c = back.generate(["organ", "organ"], duration_s=0.2, guidance_scale=3.0, seed=0)
    assert a.shape == u.shape and a.shape[0] == 2 and torch.equal(a, b) and np.isfinite(a.numpy()).all()
    assert not torch.equal(a, c)                                      # the prompt reaches the samples


def toy_tagged_clips(sr: int = 32000):
    "12 train clips (220 Hz 'piano' / 880 Hz 'organ' tones with noise), their tags, and 4 val clips."
    def clip(f, seed):
        r = np.random.default_rng(seed); t = np.arange(int(1.2 * sr)) / sr
        return torch.tensor((0.3 * np.sin(2 * np.pi * f * t) + 0.01 * r.standard_normal(len(t))).astype(np.float32))
    tags = [["instrument=piano"] if i % 2 else ["instrument=organ"] for i in range(12)]
    return [clip(220 if i % 2 else 880, i) for i in range(12)], tags, [clip(220 if i % 2 else 880, 50 + i) for i in range(4)]


def test_conditioned_training_with_dropout_and_early_stopping(tmp_path):
    tr, tags, va = toy_tagged_clips()
    m = train_demo_model(tr, va, out_dir=tmp_path / "demo", steps=40, batch_size=4, crop_frames=20, warmup=5,
                         decoder=dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, ffn_dim=64),
                         train_tags=tags, eval_every=10, patience=2, decoder_clips=4)
    t = m.meta["train"]
    assert t["conditioned"] and t["p_drop"] == 0.15 and len(t["eval_history"]) >= 2
    best = min(t["eval_history"], key=lambda h: h["heldout_ce"])
    assert t["best_step"] == best["step"]
    # the saved model is the best one: its held-out CE is the best score (fp16 rounding aside)
    back = DemoMusicModel.load(tmp_path / "demo", device="cpu")
    assert back.tags is not None and abs(m.meta["metrics"]["heldout_ce"] - best["heldout_ce"]) < 0.05
    assert back.codec.decoder_context == 2 and back.codec.dec_W.shape == (5 * 128 + 1, 1025)   # the learned decoder travels
    with pytest.raises(ValueError, match="train_tags"):
        train_demo_model(tr, va, steps=1, batch_size=2, crop_frames=10, train_tags=tags[:3],
                         decoder=dict(num_hidden_layers=1, hidden_size=16, num_attention_heads=2, ffn_dim=32))


def test_training_roles_hold_out_the_gates_clips_and_their_pieces():
    import json, pandas as pd
    from musicsae.demo.model import demo_training_roles
    lab = lambda piece=None: json.dumps({"piece": piece} if piece else {})
    gate = pd.DataFrame({"id": ["c0", "c1", "c2", "c3"], "split": ["train", "val", "test", "train"],
                         "labels": [lab(), lab("bwv1"), lab(), lab("tune9")]})
    big = pd.DataFrame({"id": ["c0", "c1", "c2", "c3", "c4", "c5", "c6", "c7"],
                        "split": ["val", "train", "train", "train", "train", "val", "train", "train"],
                        "labels": [lab(), lab("bwv1"), lab(), lab("tune9"), lab("bwv1"), lab(), lab("tune9"), lab()]})
    r = demo_training_roles(big, gate).tolist()
    # c0: a gate train clip trains even where big's split says val; c1, c2: gate held-out; c4: shares bwv1 with c1
    assert r == ["train", "heldout", "heldout", "train", "heldout", "val", "train", "train"]


def test_training_killed_mid_run_resumes_to_the_same_weights(tmp_path):
    """`train_demo_model` killed by SIGKILL between checkpoints (steps 21-25 done, not saved) and started again with
    the same arguments ends with the weights of a run never interrupted, early stopping's record included."""
    import json, subprocess, sys, textwrap
    script = textwrap.dedent(f'''
        import os, signal, sys
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import musicsae.demo.model as dm
        from test_demo_conditioning import toy_tagged_clips
        tr, tags, va = toy_tagged_clips()
        save = dm.torch_save_atomic
        def dying_save(path, obj):     # the kill: as the step-25 checkpoint is about to be written
            if sys.argv[2] == "kill" and isinstance(obj, dict) and obj.get("step") == 25: os.kill(os.getpid(), signal.SIGKILL)
            return save(path, obj)
        dm.torch_save_atomic = dying_save
        dm.train_demo_model(tr, va, out_dir=sys.argv[1] + "/out", ckpt_dir=sys.argv[1] + "/ckpt", ckpt_every=5, steps=40,
                            batch_size=4, crop_frames=20, warmup=5, threads=1, train_tags=tags, eval_every=10, patience=5,
                            decoder=dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, ffn_dim=64))
    ''')
    run = lambda d, mode: subprocess.run([sys.executable, "-c", script, str(tmp_path / d), mode], capture_output=True, text=True)
    killed = run("a", "kill")
    assert killed.returncode == -9, killed.stderr[-2000:]
    st = torch.load(tmp_path / "a" / "ckpt" / "demo_train.pt", weights_only=False)
    assert st["step"] == 20 and [h["step"] for h in st["eval"]["history"]] == [10, 20]
    assert not (tmp_path / "a" / "out").exists()
    resumed, whole = run("a", "resume"), run("b", "whole")
    assert resumed.returncode == 0 and whole.returncode == 0, (resumed.stderr[-2000:], whole.stderr[-2000:])
    cfg = {d: json.loads((tmp_path / d / "out" / "demo_config.json").read_text()) for d in "ab"}
    assert cfg["a"]["sha256"] == cfg["b"]["sha256"] and len(cfg["a"]["sha256"]) >= 3       # lm, codec and tag encoder
    for k in ("eval_history", "best_step", "final_train_loss", "steps_done"): assert cfg["a"]["train"][k] == cfg["b"]["train"][k], k


def test_kept_snapshots_are_the_weights_after_their_steps(tmp_path):
    """`keep_steps` leaves fp16 weights in ckpt_dir/snapshots/ after the checkpoints are gone: the last one is the
    final model (no early stopping: the final weights are step 12's, saved as fp16), an earlier one is not; the
    snapshot loader (`load_snapshot`, which the trajectory tool uses) puts a snapshot's weights into a model that then
    computes what the saved model does."""
    import importlib.util
    tr, tags, va = toy_tagged_clips()
    dec = dict(num_hidden_layers=2, hidden_size=32, num_attention_heads=2, ffn_dim=64)
    m = train_demo_model(tr, va, out_dir=tmp_path / "out", ckpt_dir=tmp_path / "ckpt", ckpt_every=5, steps=12, batch_size=4,
                         crop_frames=20, warmup=5, threads=1, train_tags=tags, decoder=dec, keep_steps=(6, 12))
    snaps = sorted(p.name for p in (tmp_path / "ckpt" / "snapshots").iterdir())
    assert snaps == ["step12.pt", "step6.pt"] and not (tmp_path / "ckpt" / "demo_train.pt").exists()
    s6, s12 = (torch.load(tmp_path / "ckpt" / "snapshots" / f"step{s}.pt", weights_only=False) for s in (6, 12))
    final = m.lm.state_dict()
    assert s12["step"] == 12 and all(torch.equal(s12["lm"][k].float(), final[k]) for k in final)
    assert all(torch.equal(s12["tags"][k].float(), v) for k, v in m.tags.state_dict().items())
    assert not all(torch.equal(s6["lm"][k].float(), final[k]) for k in final)
    spec = importlib.util.spec_from_file_location("traj", Path(__file__).parents[1] / "tools" / "demo_gate_trajectory.py")
    traj = importlib.util.module_from_spec(spec); spec.loader.exec_module(traj)
    from musicsae.demo.model import load_snapshot
    assert traj.load_snapshot is load_snapshot
    back = DemoMusicModel.load(tmp_path / "out", device="cpu")
    codes = m.codec.encode(va[0][None])[:, :, :30]
    load_snapshot(back, s6); l6 = back.forward_codes(codes)
    load_snapshot(back, s12)
    assert torch.allclose(back.forward_codes(codes), m.forward_codes(codes)) and not torch.allclose(l6, m.forward_codes(codes))
    with pytest.raises(ValueError, match="ckpt_dir"):
        train_demo_model(tr, va, steps=2, batch_size=2, crop_frames=10, decoder=dec, keep_steps=(1,))
