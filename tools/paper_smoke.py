"""The paper's code path at smoke size: local stand-ins for every remote asset, then the whole reproduce run.

    python tools/paper_smoke.py prepare              # the assets under data/smoke/ (idempotent; seconds)
    python tools/paper_smoke.py serve --port 8765    # the Gemini stand-in, until Ctrl-C
    python tools/paper_smoke.py run                  # prepare, serve, make reproduce CONFIG=params/paper_smoke.yaml

`prepare` puts each asset where params/paper_smoke.yaml points:
  model: hf:<dir>      a tiny transformers MusicGen (12 blocks, d 64, random weights, EnCodec + T5 sub-models) saved
                       with save_pretrained, model + processor, so HFMusicGen.from_pretrained loads it offline and
                       its tokenizer makes text prompts (CFG generation) work;
  manifest_path        a MusicSet-layout folder: audio/*.wav (demo clips of 10 s rendered by musicsae.demo.corpus),
                       metadata.jsonl with audio/caption/source/split fields, and the manifest made from it by
                       musicsae.datasets.build_musicset_manifest;
  essentia_models      the committed fixture graphs (tests/fixtures/labeling/*.pb) under the real models' file names:
                       discogs-effnet-bs64-1, genre_discogs400-discogs-effnet-1, mtg_jamendo_instrument-discogs-effnet-1,
                       and mtg_jamendo_moodtheme-discogs-effnet-1 (a copy of the instrument graph: same nodes and
                       shapes; no moodtheme fixture exists), with their .json metadata and SHA256SUMS;
  clap_model           a tiny ClapModel + ClapProcessor (musicsae.label_clap.make_tiny_clap);
  steer_judge          the same folder.
Each asset records what it was made from in <asset>/smoke.json and is remade only when that changes.

`serve` answers POST .../models/<m>:generateContent like the Gemini REST API, with a ConceptLabels JSON computed
from the request's own audio (musicsae.label_gemini.audio_reply: loudness, spectral centroid, strongest pitch),
and appends one JSON line per request to --log.

`run` starts that server on a free loopback port, writes runs/paper_smoke/params.yaml (the smoke parameters plus
`gemini_base_url`), sets GEMINI_API_KEY to a dummy value, MUSICSAE_GEMINI_BASE_URL (read by GeminiLabeler when no
base_url is given) and GOOGLE_GEMINI_BASE_URL (read by google-genai itself) to the server, MUSICSAE_SMOKE_PARAMS to
the generated file, runs the command (default: make reproduce CONFIG=params/paper_smoke.yaml) and always stops
the server. No request can leave the machine.
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import yaml

ROOT = Path(__file__).resolve().parents[1]
SMOKE_YAML = ROOT / "params" / "paper_smoke.yaml"
FIXTURES = ROOT / "tests" / "fixtures" / "labeling"
VERSION = 4            # bump when an asset's recipe changes: every asset is remade

MUSICGEN = dict(seed=0, n_layers=12, d_model=64)
CORPUS = dict(n_clips=40, seed=0, clip_s=10.0)
# fixture file stem -> the real model's file stem (musicsae.label_essentia.ESSENTIA_EFFNET / ESSENTIA_HEADS)
ESSENTIA = {"tiny-discogs-effnet-bs64": "discogs-effnet-bs64-1",
            "tiny-genre_discogs400": "genre_discogs400-discogs-effnet-1",
            "tiny-mtg_jamendo_instrument": "mtg_jamendo_instrument-discogs-effnet-1"}
MOODTHEME = "mtg_jamendo_moodtheme-discogs-effnet-1"   # made from the instrument fixture (same interface)
MOODS = ("calm happy sad dark energetic dreamy epic relaxing romantic melancholic uplifting film children christmas "
         "dramatic fun groovy heavy hopeful inspiring love meditative motivational nature party positive powerful "
         "retro sexy slow soft space sport summer trailer travel upbeat documentary corporate advertising").split()


def smoke_params(path=SMOKE_YAML) -> dict:
    return yaml.safe_load(Path(path).read_text())


def resolve(p: str) -> Path:
    p = Path(p).expanduser()
    return p if p.is_absolute() else ROOT / p


def locations(params: dict) -> dict[str, Path]:
    "Where the smoke parameters expect each asset."
    model = params["model"]
    if not model.startswith("hf:"): raise SystemExit(f"{SMOKE_YAML}: model must be hf:<folder>, got {model!r}")
    man = resolve(params["manifest_path"])
    return {"musicgen": resolve(model[3:]), "musicset": man.parent, "manifest": man,
            "essentia": resolve(params["essentia_models"]), "clap": resolve(params["clap_model"]),
            "judge": resolve(params["steer_judge"])}


def rel(p: Path) -> str:
    "A path for messages: relative to the repository when inside it."
    try: return str(Path(p).resolve().relative_to(ROOT))
    except ValueError: return str(p)


def _recipe(asset: str, **kw) -> dict:
    return {"asset": asset, "version": VERSION, **kw}


def _done(folder: Path, recipe: dict, files=()) -> bool:
    stamp = folder / "smoke.json"
    try: ok = json.loads(stamp.read_text()) == recipe
    except (OSError, ValueError): return False
    return ok and all((folder / f).exists() for f in files)


def _build(folder: Path, recipe: dict, make) -> Path:
    "Make the asset in a sibling temp folder, stamp it, then swap it in (a half-made asset is never left in place)."
    tmp = folder.with_name(folder.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True); tmp.mkdir(parents=True)
    make(tmp)
    (tmp / "smoke.json").write_text(json.dumps(recipe, indent=1))
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists(): folder.rename(old)
    tmp.rename(folder); shutil.rmtree(old, ignore_errors=True)
    return folder


def smoke_musicgen():
    "The smoke MusicGen: `tiny_hf_musicgen(**MUSICGEN)` with its codebooks fitted on demo clips of another seed than the corpus's."
    from musicsae.audio import SR
    from musicsae.demo.corpus import render_demo_clip
    from musicsae.models import fit_codebooks, tiny_hf_musicgen
    m = tiny_hf_musicgen(**MUSICGEN)
    S = int(CORPUS["clip_s"] * SR)
    fit_codebooks(m.model, np.stack([render_demo_clip(i, CORPUS["seed"] + 1, SR, clip_s=(CORPUS["clip_s"],) * 2)[0][:S] for i in range(12)]))
    return m


def make_musicgen(out: Path):
    import transformers
    from transformers import EncodecFeatureExtractor, MusicgenProcessor
    transformers.logging.set_verbosity_error()
    m = smoke_musicgen()
    m.model.save_pretrained(out)
    fe = EncodecFeatureExtractor(feature_size=1, sampling_rate=m.sample_rate)
    MusicgenProcessor(feature_extractor=fe, tokenizer=m.tokenizer).save_pretrained(out)


def corpus_records(n_clips: int, seed: int) -> list[dict]:
    "The MusicSet metadata records of the smoke corpus (no audio): id, audio, caption, source, split."
    from musicsae.demo.corpus import demo_caption, demo_clip
    recs = []
    for i in range(n_clips):
        _, labels = demo_clip(i, seed, clip_s=(CORPUS["clip_s"],) * 2)
        # 20 / 16 / 4 of 40: with 16 val tracks a feature kept by the paper's filter (r ≤ 0.25) can fire on 4 of
        # them, enough for the study's 3 example clips (with 10, r ≤ 0.25 meant ≤ 2 tracks and the study never ran)
        split = "val" if i % 5 in (1, 3) else "test" if i % 10 == 4 else "train"
        recs.append({"id": f"smoke{i:03d}", "audio": f"audio/smoke{i:03d}.wav", "caption": demo_caption(labels),
                     "source": f"demo-{labels['source']}", "split": split})
    return recs


def make_musicset(out: Path):
    from musicsae.audio import SR, write_audio
    from musicsae.demo.corpus import render_demo_clip
    (out / "audio").mkdir()
    recs = corpus_records(CORPUS["n_clips"], CORPUS["seed"])
    for i, r in enumerate(recs):
        x, _ = render_demo_clip(i, CORPUS["seed"], SR, clip_s=(CORPUS["clip_s"],) * 2)
        write_audio(out / r["audio"], x, SR, subtype="PCM_16")
    (out / "metadata.jsonl").write_text("".join(json.dumps(r) + "\n" for r in recs))


def make_essentia(out: Path):
    for src, dst in ESSENTIA.items():
        shutil.copyfile(FIXTURES / f"{src}.pb", out / f"{dst}.pb")
        shutil.copyfile(FIXTURES / f"{src}.json", out / f"{dst}.json")
    shutil.copyfile(FIXTURES / "tiny-mtg_jamendo_instrument.pb", out / f"{MOODTHEME}.pb")
    meta = json.loads((FIXTURES / "tiny-mtg_jamendo_instrument.json").read_text())
    n = len(meta["classes"])
    meta.update(name="tiny mtg_jamendo_moodtheme stand-in (the instrument fixture graph, mood class names)",
                classes=[f"{MOODS[j % len(MOODS)]}{'' if j < len(MOODS) else j // len(MOODS)}" for j in range(n)])
    (out / f"{MOODTHEME}.json").write_text(json.dumps(meta, indent=1))
    from musicsae.core import file_sha256
    sums = {p.name: file_sha256(p) for p in sorted(out.iterdir()) if p.suffix in (".pb", ".json")}
    (out / "SHA256SUMS").write_text("".join(f"{v}  {k}\n" for k, v in sorted(sums.items())))


def clap_texts(params: dict) -> list[str]:
    "What the tiny CLAP's tokenizer is trained on: the corpus captions, the Essentia class names, the steering prompt."
    texts = [r["caption"] for r in corpus_records(CORPUS["n_clips"], CORPUS["seed"])]
    for p in sorted(FIXTURES.glob("*.json")): texts += json.loads(p.read_text())["classes"]
    return texts + list(MOODS) + [str(params.get("steer_text") or "Simple melody")]


def prepare(params: dict | None = None, quiet: bool = False) -> dict[str, Path]:
    "Make every smoke asset that is missing or was made from another recipe; return their locations."
    params = params or smoke_params()
    loc = locations(params)
    say = (lambda *a: None) if quiet else (lambda *a: print(*a, flush=True))
    fixture_hash = hashlib.sha256(b"".join((FIXTURES / f"{s}.{e}").read_bytes() for s in ESSENTIA for e in ("pb", "json"))).hexdigest()[:16]
    jobs = [("musicgen", _recipe("musicgen", **MUSICGEN), ("config.json", "model.safetensors", "tokenizer.json"), make_musicgen),
            ("musicset", _recipe("musicset", **CORPUS, manifest=loc["manifest"].name), ("metadata.jsonl", loc["manifest"].name), None),
            ("essentia", _recipe("essentia", fixtures=fixture_hash), ("SHA256SUMS",), make_essentia),
            ("clap", _recipe("clap", steer_text=params.get("steer_text"), n_clips=CORPUS["n_clips"]), ("config.json",), None)]
    for name, recipe, files, make in jobs:
        folder = loc[name]
        if _done(folder, recipe, files): say(f"smoke: {rel(folder)} up to date"); continue
        t0 = time.time()
        if name == "musicset":
            def make(out, manifest=loc["manifest"].name):
                make_musicset(out)
                from musicsae.datasets import build_musicset_manifest
                man, skipped = build_musicset_manifest(out, meta="metadata.jsonl", out=manifest)
                if len(man) != CORPUS["n_clips"] or len(skipped): raise RuntimeError(f"smoke corpus: {len(man)} clips, skipped {skipped.to_dict('records')}")
        elif name == "clap":
            def make(out):
                from musicsae.label_clap import make_tiny_clap
                make_tiny_clap(out, clap_texts(params))
        _build(folder, recipe, make)
        say(f"smoke: made {rel(folder)} in {time.time() - t0:.1f} s")
    if loc["judge"] != loc["clap"] and not (loc["judge"] / "config.json").exists():
        raise SystemExit(f"{SMOKE_YAML}: steer_judge {loc['judge']} is not the smoke CLAP folder {loc['clap']}")
    return loc


def server(port: int = 0, log_path=None):
    from musicsae.label_gemini import LocalGeminiServer, audio_reply
    return LocalGeminiServer(default=audio_reply, port=port, log_path=log_path)


def serve(port: int, log_path) -> int:
    with server(port, log_path) as srv:
        print(f"Gemini stand-in at {srv.url} (log: {log_path}); Ctrl-C stops it", flush=True)
        try:
            while True: time.sleep(3600)
        except KeyboardInterrupt: pass
    return 0


def run(command: list[str] | None = None, params_file=SMOKE_YAML) -> int:
    params = smoke_params(params_file)
    prepare(params)
    run_dir = ROOT / "runs" / Path(params_file).stem
    run_dir.mkdir(parents=True, exist_ok=True)
    log = run_dir / "gemini_requests.jsonl"
    log.unlink(missing_ok=True)
    cmd = command or ["make", "reproduce", f"CONFIG={rel(params_file)}"]
    srv = server(0, log)
    with srv:
        gen = run_dir / "params.yaml"
        gen.write_text(f"# generated by tools/paper_smoke.py run: {Path(params_file).name} + the Gemini stand-in's URL\n"
                       + yaml.safe_dump({**params, "gemini_base_url": srv.url}, sort_keys=False))
        env = {**os.environ, "GEMINI_API_KEY": "paper-smoke-dummy-key", "MUSICSAE_GEMINI_BASE_URL": srv.url,
               "GOOGLE_GEMINI_BASE_URL": srv.url, "MUSICSAE_SMOKE_PARAMS": str(gen), "MUSICSAE_ROOT": str(ROOT)}
        print(f"smoke: Gemini stand-in at {srv.url}; running: {' '.join(cmd)}", flush=True)
        t0 = time.time()
        try: rc = subprocess.run(cmd, cwd=ROOT, env=env).returncode
        except KeyboardInterrupt: rc = 130
    reqs = [json.loads(l) for l in log.read_text().splitlines()] if log.exists() else []
    names = {r["reply"]["overall_name"] for r in reqs if r.get("reply")}
    print(f"smoke: exit {rc} after {time.time() - t0:.0f} s; Gemini stand-in served {len(reqs)} requests "
          f"({len(names)} distinct labels), log {rel(log)}", flush=True)
    return rc


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    sub.add_parser("prepare", help="make the assets under data/smoke/")
    s = sub.add_parser("serve", help="run the Gemini stand-in")
    s.add_argument("--port", type=int, default=0)
    s.add_argument("--log", default=str(ROOT / "runs" / "paper_smoke" / "gemini_requests.jsonl"))
    r = sub.add_parser("run", help="prepare, serve, and run the command (default: make reproduce CONFIG=params/paper_smoke.yaml)")
    r.add_argument("--params", default=str(SMOKE_YAML), help="the smoke parameter file (its stem names the run)")
    r.add_argument("command", nargs=argparse.REMAINDER, help="instead of make reproduce, e.g. -- make reproduce CONFIG=... FORCE=1")
    a = ap.parse_args(argv)
    os.environ.setdefault("MUSICSAE_ROOT", str(ROOT))
    if a.cmd == "prepare": prepare(); return 0
    if a.cmd == "serve":
        Path(a.log).parent.mkdir(parents=True, exist_ok=True)
        return serve(a.port, a.log)
    cmd = [c for c in a.command if c != "--"] or None
    return run(cmd, resolve(a.params))


if __name__ == "__main__":
    sys.exit(main())
