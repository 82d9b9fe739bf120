"""The feature atlas (09c): the index and page data against the run's own tables, incremental rebuilds, runs that lack
labels / steering / concepts / SAE weights, and the site opened from disk in headless Chromium."""
import json
import os
import re
import shutil
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from musicsae import atlas as A
from musicsae.audio import write_audio
from musicsae.browser import toy_run
from musicsae.core import RunLayout, read_jsonl
from musicsae.data import write_manifest
from musicsae.features import FeatureStats
from musicsae.testing import PlantedStore
from musicsae.labeling import label_record
from musicsae.metrics import auroc_matrix
from musicsae.sae import TopKSAE

torch.set_num_threads(1)
N, FRAMES, SR = 200, 20, 16000
SAES = {"L2_ef4_k4": 2, "L6_ef4_k4": 6}


def read_js(path):
    "The JSON argument(s) of a data script `CALL(a,b,…);`."
    text = Path(path).read_text()
    return json.loads("[" + text[text.index("(") + 1:text.rindex(")")] + "]")


def make_run(root: Path, full=True) -> Path:
    """Two SAEs (layers 2 and 6, the same random decoder: each feature's nearest in the other SAE is itself, cosine 1)
    on planted stores with example audio; `full` adds SAE weights, a manifest with the planted concepts as labels,
    labels for three features, steered clips of one feature, a hand-made recovery table and 05c's per-latent benchmark
    rows for two features."""
    for sid, layer in SAES.items():
        toy_run(root, n_tracks=N, n_frames=FRAMES, expansion=4, k=4, layer=layer, seed=0, sr=SR)
    lay = RunLayout(root.name, folder=str(root))
    for layer in SAES.values():
        lay.acts(layer).mkdir(parents=True, exist_ok=True)
        (lay.acts(layer) / "card.json").write_text(json.dumps({"model": "planted", "frame_rate": 50.0}))
    if not full: return root
    for sid, layer in SAES.items(): TopKSAE(16, 64, 4, layer=layer, seed=0).save(lay.sae(sid))
    ps = PlantedStore(n_tracks=N, n_frames=FRAMES, d_model=16, layer=2, seed=0)
    C = ps.concepts
    rows = [dict(id=t, path=f"audio/{t}.wav", start=0.0, duration=FRAMES / 50, split=s,
                 labels=json.dumps({"planted": [c.split("=")[1] for c in C.columns if C.loc[t, c]]})) for t, s in zip(ps.ids, ps.splits)]
    write_manifest(pd.DataFrame(rows), lay.manifest)
    ft = pd.read_parquet(lay.features("L2_ef4_k4") / "features.parquet")
    kept = ft.feature[ft.status == "retained"].tolist()
    recs = [label_record(f, "L2_ef4_k4", [dict(label=f"hum {f}", source="demo:instrument", score=0.5, clap=0.1 * i),
                                          dict(label="bright <b>brass</b>", source="essentia:genre", score=0.9, clap=0.05)])
            for i, f in enumerate(kept[:3])]
    lay.labels_root.mkdir(parents=True, exist_ok=True)
    lay.labels("L2_ef4_k4").write_text("".join(json.dumps(r) + "\n" for r in recs))
    f0, t = kept[0], np.arange(int(0.3 * 32000)) / 32000
    for name in ["baseline_s0.wav", f"L2_ef4_k4/{f0}/feature_a1_s0.wav", f"L2_ef4_k4/{f0}/control0_a1_s0.wav",
                 f"L2_ef4_k4/{f0}/feature_a2_s0.wav"]:
        (lay.steering / name).parent.mkdir(parents=True, exist_ok=True)
        write_audio(lay.steering / name, (0.2 * np.sin(2 * np.pi * 440 * t)).astype(np.float32), 32000)
    pd.DataFrame(dict(sae="L2_ef4_k4", feature=f0, kind=["feature", "control0", "feature"], alpha=[1.0, 1.0, 2.0], beta=1.0,
                      path="", baseline=0.1, steered=[0.3, 0.05, 0.4], improvement=[0.2, -0.05, 0.3])).to_parquet(lay.steering / "scores.parquet")
    pd.DataFrame(dict(method="sae", scope="L2_ef4_k4", layer=2, seed=[0, 1, 2], concept="planted=c1", unit=[f0, f0, kept[1]],
                      auroc=[0.9, 0.8, 0.7])).to_parquet(lay.features_root / "recovery.parquet")
    from musicsae.musicbench_latents import LATENT_COLUMNS, latents_file
    latents_file(lay.musicbench, 2).parent.mkdir(parents=True)
    pd.DataFrame([["L2_ef4_k4", f0, "root:C", "root", 4, 5, 0.93, 0.02, 0.97, 0.61], ["L2_ef4_k4", kept[1], "beat", "beat", 2, 5, 0.58, 0.04, 0.8, 0.6]],
                 columns=list(LATENT_COLUMNS)).to_parquet(latents_file(lay.musicbench, 2))
    return root


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    root = make_run(tmp_path_factory.mktemp("atlasrun") / "cfg")
    res = A.build_atlas(root, progress=False)
    return root, res


def test_index_matches_the_runs_tables(run):
    root, res = run
    lay = RunLayout("cfg", folder=str(root))
    (idx,) = read_js(root / "atlas" / "data" / "index.js")
    C = idx["cols"]
    assert [s["id"] for s in idx["saes"]] == list(SAES) and res["n_saes"] == 2 and not res["fresh"]
    assert res["index_bytes"] == (root / "atlas" / "data" / "index.js").stat().st_size
    for si, sid in enumerate(SAES):
        ft = pd.read_parquet(lay.features(sid) / "features.parquet").set_index("feature")
        kept = ft[ft.status == "retained"]
        rows = [i for i, s in enumerate(C["s"]) if s == si]
        assert [C["f"][i] for i in rows] == kept.index.tolist() and len(rows) > 10   # every retained feature, no other
        assert [C["n"][i] for i in rows] == kept["count"].tolist()
        np.testing.assert_allclose([C["m"][i] for i in rows], kept.mean_act, rtol=1e-3)
        np.testing.assert_allclose([C["b"][i] for i in rows], kept.beta, rtol=1e-3)
        assert idx["saes"][si]["n_tracks"] == N // 5 and idx["saes"][si]["retained"] == len(kept)
    assert res["n_features"] == len(C["f"]) and sum(l >= 0 for l in C["l"]) == 3 == res["labelled"]
    # labels: the best candidate (highest CLAP) and its score; every candidate searchable
    recs = read_jsonl(lay.labels("L2_ef4_k4"))
    for r in recs:
        i = next(i for i in range(len(C["f"])) if C["s"][i] == 0 and C["f"][i] == r["feature"])
        assert idx["labels"][C["l"][i]] == r["best"]["label"] and np.isclose(C["c"][i], r["best"]["clap"])
        assert {idx["labels"][j] for j in C["ls"][i]} == {c["label"] for c in r["candidates"]}
    # concept AUROC: the best planted concept of each feature's per-track mean on the filter split, recomputed
    st = FeatureStats.load(lay.features("L2_ef4_k4") / "stats.npz")
    ps = PlantedStore(n_tracks=N, n_frames=FRAMES, d_model=16, layer=2, seed=0)
    Cm = ps.concepts.reindex(st.track_ids)
    Cm = Cm.loc[:, (Cm.sum() >= 3) & (Cm.sum() <= len(Cm) - 3)]
    rows = [i for i, s in enumerate(C["s"]) if s == 0]
    Am = auroc_matrix(st.mu[:, [C["f"][i] for i in rows]], Cm.to_numpy())
    np.testing.assert_allclose([C["a"][i] for i in rows], Am.max(1), atol=1e-3)
    assert [idx["concepts"][C["k"][i]] for i in rows] == [f"planted={c.split('=')[1]}" for c in Cm.columns[Am.argmax(1)]]
    assert res["probe"] and all(g in (2, 6) for g in C["g"])                    # two layers: the probe guesses one of them
    # 05c's benchmark: its two rows, nothing for the other features
    assert [(C["s"][i], C["f"][i], idx["bench_concepts"][C["bk"][i]], C["ba"][i]) for i in range(len(C["f"])) if C["bk"][i] >= 0] == \
           [(0, recs[0]["feature"], "root:C", 0.93), (0, recs[1]["feature"], "beat", 0.58)] and res["benchmarked"] == 2


def test_pages_hold_curves_histograms_neighbours_and_steering(run):
    root, res = run
    lay = RunLayout("cfg", folder=str(root))
    (idx,) = read_js(root / "atlas" / "data" / "index.js")
    st = FeatureStats.load(lay.features("L2_ef4_k4") / "stats.npz")
    ex = pd.read_parquet(lay.features("L2_ef4_k4") / "examples.parquet")
    fr = np.load(lay.features("L2_ef4_k4") / "frames.npz")
    f0 = pd.read_parquet(lay.features("L2_ef4_k4") / "features.parquet").query("status == 'retained'").feature.iloc[0]
    sid, c, data = read_js(root / "atlas" / "data" / "L2_ef4_k4" / f"{f0 // idx['chunk']}.js")
    assert sid == "L2_ef4_k4" and all(int(f) // idx["chunk"] == c for f in data)
    d = data[str(f0)]
    e = ex[ex.feature == f0].sort_values("rank")
    assert [idx["clips"][x[0]] for x in d["ex"]] == e.track_id.tolist() and [x[1] for x in d["ex"]] == e["rank"].tolist()
    top = max(fr[f"{f0}_{r}"].max() for r in e["rank"])
    assert [x[5] for x in d["ex"]] == [A.curve_code(fr[f"{f0}_{r}"], top) for r in e["rank"]]
    assert all(x[6] == 1 for x in d["ex"]) and all(np.isclose(x[4], FRAMES / 50) for x in d["ex"])
    assert sum(d["h"]) == int(st.counts[f0]) and d["hz"] == st.n_tracks - st.counts[f0]
    for x in d["ex"]:   # one spectrogram per clip, the one every page of that clip shares
        assert (root / "atlas" / idx["spec"][x[0]]).is_file() and idx["dur"][x[0]] == pytest.approx(FRAMES / 50, abs=1e-3)
    assert res["n_clips"] == len(idx["clips"]) == len(set(idx["clips"])) <= N // 5
    # steering: both α with the paired baseline, 08's improvement joined
    assert [(k, a, v) for k, a, _, _, v in d["st"]] == [("control0", 1.0, -0.05), ("feature", 1.0, 0.2), ("feature", 2.0, 0.3)]
    assert all((root / p).is_file() and (root / "atlas" / s).is_file() for _, _, p, s, _ in d["st"])
    assert idx["steer_base"][0] == "steering/baseline_s0.wav" and (root / "atlas" / idx["steer_base"][1]).is_file()
    # neighbours: the other SAE has the same decoder, so each feature's nearest there is itself at cosine 1
    retained6 = set(pd.read_parquet(lay.features("L6_ef4_k4") / "features.parquet").query("status == 'retained'").feature)
    if f0 in retained6: assert d["nx"][0][:2] == [1, int(f0)] and d["nx"][0][2] == pytest.approx(1.0, abs=1e-4)
    W = torch.nn.functional.normalize(TopKSAE.load(lay.sae("L2_ef4_k4")).W_dec.detach(), dim=1)
    kept = [f for f, s in zip(idx["cols"]["f"], idx["cols"]["s"]) if s == 0]
    cos = (W[kept] @ W[f0]).numpy(); cos[kept.index(f0)] = -9
    assert [n[0] for n in d["nn"]] == [kept[j] for j in np.argsort(-cos)[:5]]
    np.testing.assert_allclose([n[1] for n in d["nn"]], np.sort(cos)[::-1][:5], atol=1e-3)
    assert d["rec"] == [[idx["concepts"].index("planted=c1"), 2, 3, pytest.approx(0.85)]]
    assert d["bm"] == [idx["bench_concepts"].index("root:C"), 0.93, 0.02, 4, 5, 0.97, 0.61]
    assert d["pr"][0] in (2, 6) and 0 < d["pr"][1] <= 1 and d["best"] == 1 and d["lab"][1][1] == "essentia:genre"   # brass: CLAP 0.05 > 0


def test_rebuild_with_nothing_changed_does_nothing(run, tmp_path):
    root, _ = run
    work = tmp_path / "cfg"; shutil.copytree(root, work, symlinks=True)
    first = A.build_atlas(work, progress=False)          # a moved run: nothing depends on where it lies
    assert first["fresh"] and first["n_features"] == run[1]["n_features"]
    times = {p: p.stat().st_mtime_ns for p in (work / "atlas").rglob("*") if p.is_file()}
    again = A.build_atlas(work, progress=False)
    assert again["fresh"] and {p: p.stat().st_mtime_ns for p in (work / "atlas").rglob("*") if p.is_file()} == times
    lab = RunLayout("cfg", folder=str(work)).labels("L2_ef4_k4")
    lab.write_text(lab.read_text().replace("hum", "drone"))
    probe_made = (work / "atlas" / "probe.parquet").stat().st_mtime_ns
    third = A.build_atlas(work, progress=False)
    assert (work / "atlas" / "probe.parquet").stat().st_mtime_ns == probe_made      # 05 unchanged: the probe's guesses kept
    assert not third["fresh"] and third["spectrograms_made"] == 0 and third["n_features"] == first["n_features"]
    (idx,) = read_js(work / "atlas" / "data" / "index.js")
    assert any(l.startswith("drone") for l in idx["labels"]) and not any(l.startswith("hum") for l in idx["labels"])


def test_a_bare_run_builds_without_its_missing_sections(tmp_path):
    root = make_run(tmp_path / "bare", full=False)        # no SAE weights, manifest, labels, steering or recovery
    res = A.build_atlas(root, progress=False)
    (idx,) = read_js(root / "atlas" / "data" / "index.js")
    assert res["n_features"] == len(idx["cols"]["f"]) and not res["neighbours"] and res["concepts"] == 0 and res["labelled"] == 0
    assert idx["labels"] == [] and idx["steer_base"] is None and all(k == -1 for k in idx["cols"]["k"])
    f = idx["cols"]["f"][0]
    _, _, data = read_js(root / "atlas" / "data" / "L2_ef4_k4" / f"{f // idx['chunk']}.js")
    assert data[str(f)]["nn"] == [] and data[str(f)]["st"] == [] and data[str(f)]["lab"] == [] and len(data[str(f)]["ex"]) > 0
    assert A.build_atlas(tmp_path / "none", progress=False)["skipped"].endswith("run 05_features first")
    assert A.main([str(root), "--quiet"]) == 0


def make_folder_run(root: Path) -> Path:
    """A run as params/folder.yaml makes one: SAE weights and a manifest whose clips carry no labels (no concepts, no
    recovery), 06's candidate labels for the layer-6 SAE only, no steering; 05c's per-latent benchmark table for the
    layer-2 SAE only (made by musicbench_latents.latent_table from the SAE's codes of the planted store on its planted concepts)."""
    import scipy.sparse as sp
    from musicsae.concept_scores import Concepts, group_splits
    from musicsae.musicbench_latents import latent_table, latents_file
    make_run(root, full=False)
    lay = RunLayout(root.name, folder=str(root))
    for sid, layer in SAES.items(): TopKSAE(16, 64, 4, layer=layer, seed=0).save(lay.sae(sid))
    ps = PlantedStore(n_tracks=N, n_frames=FRAMES, d_model=16, layer=2, seed=0)
    write_manifest(pd.DataFrame([dict(id=t, path=f"audio/{t}.wav", start=0.0, duration=FRAMES / 50, split=s, labels="{}")
                                 for t, s in zip(ps.ids, ps.splits)]), lay.manifest)
    kept6 = pd.read_parquet(lay.features("L6_ef4_k4") / "features.parquet").query("status == 'retained'").feature.tolist()
    lay.labels_root.mkdir(parents=True, exist_ok=True)
    lay.labels("L6_ef4_k4").write_text("".join(json.dumps(label_record(f, "L6_ef4_k4", [dict(label=f"tag {f % 3}", source="demo:tagger", score=0.4, clap=0.2)])) + "\n"
                                               for f in kept6[:4]))
    with torch.no_grad():
        X = torch.cat([ps.track(t) for t in ps.ids]); F = sp.csr_matrix(TopKSAE.load(lay.sae("L2_ef4_k4")).encode_dense(X).numpy())
    Y = np.repeat(ps.concepts.loc[list(ps.ids)].to_numpy(bool), FRAMES, 0)
    fam = [c.split("=")[0] for c in ps.concepts.columns]
    con = Concepts(Y, [c.replace("=", ":") for c in ps.concepts.columns], fam, pd.DataFrame({f: np.ones(len(Y), bool) for f in set(fam)}))
    fc = np.repeat(np.arange(len(ps.ids)), FRAMES)
    lt = latent_table(F, con, fc, group_splits(np.arange(len(ps.ids)), 5), sae="L2_ef4_k4")
    latents_file(lay.musicbench, 2).parent.mkdir(parents=True); lt.to_parquet(latents_file(lay.musicbench, 2))
    return root


def test_a_folder_run_without_labels(tmp_path):
    "A folder run's atlas: every retained feature per SAE, 06's labels where they are, the benchmark where 05c made it, nothing else."
    from musicsae.musicbench_latents import latents_file
    root = make_folder_run(tmp_path / "mymusic")
    lay = RunLayout("mymusic", folder=str(root))
    res = A.build_atlas(root, progress=False)
    assert Path(res["out"]) == lay.atlas and (lay.atlas / "index.html").is_file()
    (idx,) = read_js(lay.atlas / "data" / "index.js")
    C = idx["cols"]
    assert [s["id"] for s in idx["saes"]] == list(SAES) and res["n_features"] == len(C["f"])
    lt = pd.read_parquet(latents_file(lay.musicbench, 2)).set_index("latent")
    recs = {int(r["feature"]): r for r in read_jsonl(lay.labels("L6_ef4_k4"))}
    for si, sid in enumerate(SAES):
        kept = pd.read_parquet(lay.features(sid) / "features.parquet").query("status == 'retained'").feature.tolist()
        rows = [i for i, s in enumerate(C["s"]) if s == si]
        assert [C["f"][i] for i in rows] == kept and idx["saes"][si]["retained"] == len(kept)
        # labels: exactly 06's features of the layer-6 SAE, with their best label
        assert [C["f"][i] for i in rows if C["l"][i] >= 0] == ([f for f in kept if f in recs] if sid == "L6_ef4_k4" else [])
        for i in rows:
            if C["l"][i] >= 0: assert idx["labels"][C["l"][i]] == recs[C["f"][i]]["best"]["label"]
        # the benchmark: the layer-2 SAE's retained features that have a row in 05c's table, their concept and AUROC
        bm = [i for i in rows if C["bk"][i] >= 0]
        assert [C["f"][i] for i in bm] == ([f for f in kept if f in lt.index] if sid == "L2_ef4_k4" else []) and idx["saes"][si]["benchmarked"] == len(bm)
        for i in bm:
            f = C["f"][i]
            assert idx["bench_concepts"][C["bk"][i]] == lt.loc[f, "concept"] and C["ba"][i] == pytest.approx(lt.loc[f, "auroc"], abs=1e-3)
        # pages: no steering, no concepts or recovery (the clips have no labels); the benchmark section exactly where the column is
        for k in sorted({C["f"][i] // idx["chunk"] for i in rows}):
            _, _, data = read_js(lay.atlas / "data" / sid / f"{k}.js")
            for f, d in data.items():
                assert d["st"] == [] and d["con"] == [] and d["rec"] == [] and len(d["ex"]) > 0 and len(d["nn"]) == 5
                assert ("bm" in d) == (sid == "L2_ef4_k4" and int(f) in lt.index)
                if "bm" in d:
                    r = lt.loc[int(f)]
                    assert d["bm"][:5] == [idx["bench_concepts"].index(r.concept), pytest.approx(r.auroc, abs=1e-3),
                                           None if np.isnan(r.auroc_sd) else pytest.approx(r.auroc_sd, abs=1e-3), r.seeds_chose, r.n_seeds]
                    assert d["bm"][5:] == [None, None]                                  # no layer scores given: no SAE-best / twin numbers
    assert res["benchmarked"] == sum(1 for x in C["bk"] if x >= 0) > 0 and idx["concepts"] == [] and all(k == -1 and a is None for k, a in zip(C["k"], C["a"]))
    assert idx["steer_base"] is None and not any(C["st"]) and res["labelled"] == len(set(recs) & set(C["f"][i] for i, s in enumerate(C["s"]) if s == 1))
    assert set(idx["labels"]) == {c["label"] for r in recs.values() for c in r["candidates"] if r["feature"] in C["f"]} and res["concepts"] == 0
    # the run's benchmark changes: the atlas is rebuilt; nothing changes: it is not
    assert A.build_atlas(root, progress=False)["fresh"]
    latents_file(lay.musicbench, 2).unlink()
    again = A.build_atlas(root, progress=False)
    assert not again["fresh"] and again["benchmarked"] == 0 and again["spectrograms_made"] == 0


def test_make_docs_links_the_runs_atlas(run, tmp_path):
    "tools/build_docs.py: the landing page links out/atlas/, a shell whose root.js points back at the run (nothing copied)."
    import importlib.util, sys
    spec = importlib.util.spec_from_file_location("build_docs", Path(__file__).resolve().parents[1] / "tools" / "build_docs.py")
    bd = sys.modules.setdefault("build_docs", importlib.util.module_from_spec(spec)); spec.loader.exec_module(bd)
    root, _ = run
    block = bd.atlas_block(root, tmp_path / "_docs")
    assert 'href="atlas/index.html"' in block and sorted(p.name for p in (tmp_path / "_docs" / "atlas").iterdir()) == [
        "atlas.css", "atlas.js", "index.html", "root.js"]
    js = (tmp_path / "_docs" / "atlas" / "root.js").read_text()
    base, rootp = [json.loads(v) for v in re.findall(r'= ("[^"]*")', js)]
    assert (tmp_path / "_docs" / "atlas" / base).resolve() == (root / "atlas").resolve()
    assert (tmp_path / "_docs" / "atlas" / rootp).resolve() == root.resolve()
    assert bd.atlas_block(tmp_path / "no-run", tmp_path / "_docs") == "" and not (tmp_path / "_docs" / "atlas").exists()


# ---- the site in a real browser -------------------------------------------------------------------------------------
CHROMIUM = os.environ.get("MUSICSAE_CHROMIUM") or next((p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None)
DRIVER = os.environ.get("MUSICSAE_CHROMEDRIVER") or shutil.which("chromedriver")


@pytest.fixture(scope="module")
def browser():
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (pip install selenium)")
    if not (CHROMIUM and Path(CHROMIUM).exists() and DRIVER and Path(DRIVER).exists()):
        pytest.skip(f"Chromium ({CHROMIUM}) or chromedriver ({DRIVER}) not found: apt-get install -y chromium chromium-driver")
    os.environ.setdefault("SE_OFFLINE", "true")  # Selenium Manager must not try to download anything
    opts = webdriver.ChromeOptions()
    opts.binary_location = CHROMIUM
    profile = tempfile.mkdtemp(prefix="chromium-profile-")
    for flag in ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--disable-dev-shm-usage", "--window-size=1400,1000", f"--user-data-dir={profile}"]:
        opts.add_argument(flag)
    opts.set_capability("goog:loggingPrefs", {"browser": "ALL"})
    drv = webdriver.Chrome(options=opts, service=webdriver.ChromeService(executable_path=DRIVER))
    drv.set_script_timeout(30)
    yield drv
    drv.quit(); shutil.rmtree(profile, ignore_errors=True)


def _errors(drv):
    return [e for e in drv.get_log("browser") if e["level"] in ("SEVERE", "ERROR")]


def _rows(drv):
    # read in one script call: the table re-renders on every keystroke, and element handles fetched one by one go stale
    return drv.execute_script("return [...document.querySelectorAll('#table tbody tr')].map(r => r.getAttribute('data-id'))")


@pytest.mark.timeout(180)
def test_site_from_disk_in_chromium(run, browser, tmp_path):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.support.ui import WebDriverWait
    from urllib.parse import unquote, urlparse
    root, res = run
    (idx,) = read_js(root / "atlas" / "data" / "index.js")
    shots = Path(os.environ.get("MUSICSAE_ATLAS_SHOTS", tmp_path))
    # the run's own atlas, and the shell `make docs` puts elsewhere, both from file://
    for page in (root / "atlas" / "index.html", A.write_shell(root / "atlas", tmp_path / "docs" / "atlas")):
        drv = browser; drv.get_log("browser")
        drv.get(page.as_uri())
        WebDriverWait(drv, 15).until(lambda d: len(_rows(d)) > 0)
        n = len(idx["cols"]["f"])
        assert drv.find_element(By.ID, "count").text.startswith(f"{min(n, 100)} of {n}" if n <= 100 else f"{n} of {n}")
        assert not _errors(drv), _errors(drv)
        # search: a label of one feature (any candidate), then an id; the SAE filter
        label = next(l for l in idx["labels"] if l.startswith("hum"))
        q = drv.find_element(By.ID, "q"); q.clear(); q.send_keys(label)
        want = [f"L2_ef4_k4/{f}" for f, s, ls in zip(idx["cols"]["f"], idx["cols"]["s"], idx["cols"]["ls"])
                if s == 0 and ls and idx["labels"].index(label) in ls]
        WebDriverWait(drv, 5).until(lambda d: _rows(d) == want)
        q.clear(); q.send_keys("brass")
        WebDriverWait(drv, 5).until(lambda d: len(_rows(d)) == 3)
        q.clear(); q.send_keys("root:c")   # a benchmark concept
        WebDriverWait(drv, 5).until(lambda d: _rows(d) == [f"L2_ef4_k4/{f}" for f, k in zip(idx["cols"]["f"], idx["cols"]["bk"]) if k == 0])
        q.clear(); q.send_keys(" ")   # whitespace: every row again
        b = drv.find_element(By.ID, "f-bauc"); b.send_keys("0.9")
        WebDriverWait(drv, 5).until(lambda d: len(_rows(d)) == 1)
        b.clear(); b.send_keys(" ")
        WebDriverWait(drv, 5).until(lambda d: len(_rows(d)) == min(n, 100))
        from selenium.webdriver.support.select import Select
        Select(drv.find_element(By.ID, "f-sae")).select_by_value("L6_ef4_k4")
        n6 = sum(s == 1 for s in idx["cols"]["s"])
        WebDriverWait(drv, 5).until(lambda d: drv.find_element(By.ID, "count").text.startswith(f"{n6} of {n}"))
        assert all(r.startswith("L6_ef4_k4/") for r in _rows(drv))
        Select(drv.find_element(By.ID, "f-sae")).select_by_value("")
        if page.parent == root / "atlas": drv.save_screenshot(str(shots / "atlas_index.png"))
        # a feature page by its link: ten clips whose files exist, the curve drawn, labels, steering, neighbours
        f0 = next(f for f, s, l in zip(idx["cols"]["f"], idx["cols"]["s"], idx["cols"]["st"]) if l)
        drv.get(page.as_uri() + f"#L2_ef4_k4/{f0}")
        WebDriverWait(drv, 15).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, ".examples audio")) > 0)
        audios = drv.find_elements(By.CSS_SELECTOR, ".examples audio")
        assert len(audios) == 10 and all(a.get_attribute("preload") == "none" for a in audios)
        for a in audios: assert Path(unquote(urlparse(a.get_attribute("src")).path)).resolve().is_file()
        imgs = drv.find_elements(By.CSS_SELECTOR, ".examples img")
        assert len(imgs) == 10 and all(Path(unquote(urlparse(i.get_attribute("src")).path)).is_file() for i in imgs)
        drawn = drv.execute_script("var c = document.querySelector('.examples canvas'); var d = c.getContext('2d')"
                                   ".getImageData(0, 0, c.width, c.height).data; var n = 0; for (var i = 3; i < d.length; i += 4) n += d[i] > 0; return n;")
        assert drawn > 100
        text = drv.find_element(By.ID, "feature-view").text
        assert "Candidate labels" in text and "bright <b>brass</b>" in text and "Steering" in text and "Nearest features" in text
        assert "Layer probe" in text and "Concept recovery" in text
        assert "Benchmark" in text and "root:C" in text and "0.93 ± 0.02" in text and "random-weight twin" in text and "chance" in text
        assert len(drv.find_elements(By.CSS_SELECTOR, ".steer audio")) == 5   # α=1: baseline, feature, control; α=2: baseline, feature
        for a in drv.find_elements(By.CSS_SELECTOR, ".steer audio"): assert Path(unquote(urlparse(a.get_attribute("src")).path)).resolve().is_file()
        WebDriverWait(drv, 10).until(lambda d: d.execute_script("return [...document.querySelectorAll('.examples img')].every(i => i.complete && i.naturalWidth > 0)"))
        if page.parent == root / "atlas": drv.save_screenshot(str(shots / "atlas_feature.png"))
        assert not _errors(drv), _errors(drv)
        # a neighbour link opens its page
        drv.find_element(By.CSS_SELECTOR, ".sec table a").click()
        WebDriverWait(drv, 10).until(lambda d: d.find_element(By.TAG_NAME, "h1").text != f"L2_ef4_k4/{f0}")
        assert not _errors(drv), _errors(drv)
