"""How do the demo model's gates move with training? Score the weights a retrain kept, then the final weights per layer.

    python tools/demo_gate_trajectory.py [--snapshots runs/demo_model/snapshots] [--model data/models/demo]
                                         [--final-layers 2 4 8 12 14] [--out runs/demo_model/gate_trajectory.json]

`make demo-model` keeps the weights after `train_keep_steps` (params/demo_model.yaml) in `runs/demo_model/snapshots/`.
Each snapshot is loaded into the retrained model (same codec, same architecture) and scored with `demo_gates` on the
gates' clips of 02a (320 train / 160 held-out clips of `demo_corpus(800)`, 50 concepts) at the middle layer, without
the generations; then the final weights at every `--final-layers` layer. One JSON line per row: CE on train and
held-out clips, the residual probe's and the bag-of-codes probe's median AUROC, their margin (the gate asks ≥ 0.05),
token R², and the per-facet medians.
"""
import argparse, json, re, time
from pathlib import Path

import torch

from musicsae.core import data_dir, paper_layers, runs_dir
from musicsae.demo.gates import demo_gates, gate_clips
from musicsae.demo.model import DEMO_DIR, DemoMusicModel, load_snapshot

KEYS = ("ce_train", "ce_heldout", "probe_median_auroc", "bag_of_codes_median_auroc", "token_r2_mid")


def score(model, audio, concepts, layer) -> dict:
    t = time.time()
    m, per = demo_gates(model, audio["train"], audio["heldout"], concepts, tagger=None, layer=layer,
                        hand_reference=False, min_pos=5)
    row = {k: m[k] for k in KEYS}
    row.update(layer=layer, margin=m["probe_median_auroc"] - m["bag_of_codes_median_auroc"], seconds=round(time.time() - t),
               per_facet=per.groupby("facet")[["residual", "bag_of_codes"]].median().round(3).to_dict("index"))
    return row


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--snapshots", help="default: runs/demo_model/snapshots")
    ap.add_argument("--model", help="default: data/models/demo")
    ap.add_argument("--final-layers", type=int, nargs="*", default=None, help="default: the paper's five layers")
    ap.add_argument("--out", help="default: runs/demo_model/gate_trajectory.json")
    ap.add_argument("--threads", type=int, default=2)
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    snap_dir = Path(a.snapshots or runs_dir("demo_model") / "snapshots")
    out = Path(a.out or runs_dir("demo_model") / "gate_trajectory.json")
    audio, concepts = gate_clips()
    model = DemoMusicModel.load(Path(a.model or data_dir() / DEMO_DIR), device="cpu")
    final = {"lm": {k: v.clone() for k, v in model.lm.state_dict().items()},
             "tags": None if model.tags is None else {k: v.clone() for k, v in model.tags.state_dict().items()}}
    mid = model.n_layers // 2
    snaps = sorted(snap_dir.glob("step*.pt"), key=lambda p: int(re.findall(r"\d+", p.stem)[0]))
    rows = []
    def emit(row):
        print(json.dumps(row), flush=True); rows.append(row)
        out.parent.mkdir(parents=True, exist_ok=True); out.write_text(json.dumps(rows, indent=1))
    for p in snaps:
        st = torch.load(p, weights_only=False); load_snapshot(model, st)
        emit(dict(weights=p.stem, step=int(st["step"]), **score(model, audio, concepts, mid)))
    load_snapshot(model, final)
    steps = model.meta.get("train", {}).get("best_step")
    for L in (a.final_layers if a.final_layers is not None else paper_layers(model.n_layers)):
        emit(dict(weights="final", step=steps, **score(model, audio, concepts, L)))


if __name__ == "__main__":
    main()
