"""Run the stage notebooks of one parameter file, rerunning a stage exactly when what it is made from changed.

    python tools/reproduce.py params/demo.yaml [--stages 00_core 01_data ...] [--force]

This is `make reproduce`. For each stage, in order, the *inputs* are: the notebook's bytes, the library's source
(musicsae/**/*.py), the parameters the notebook declares (papermill's `parameters` cell) with their values from the
parameter file, the fingerprint of any local file or folder those values name (a user's `audio_dir`, a manifest, a
model folder), and the previous stage's stamp. A stage whose stamp (runs/<cfg>/stamps/<stage>.json) records the same
inputs, and whose executed copy exists, is skipped; file times never enter. A stage that reruns changes its stamp,
so every later stage reruns too (their own resume logic keeps whatever work is still valid).

Each notebook receives only the parameters it declares (runs/<cfg>/params/<stage>.yaml), so its injected-parameters
cell shows what it uses. The kernel draws with matplotlib's inline backend (`musicsae.core.kernel_env`), so each
executed copy shows its figures where they are drawn, beside the files the stages save under figures/<cfg>/.
A failed stage leaves runs/<cfg>/<stage>.failed.ipynb and its log, and stops the run.
"""
import argparse
import ast
import functools
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import yaml
import nbformat

from musicsae.core import (RunLayout, file_sha256, fingerprint, fresh, kernel_env, library_fingerprint, repo_root, resolve_path,
                           tree_fingerprint, write_json_atomic, write_stamp)


def declared_params(nb: Path) -> list[str]:
    """The names assigned in the notebook's papermill `parameters` cell (parsed with `ast`: papermill's own inspector
    drops a line whose comment holds quotes, and that parameter would silently keep its test-size default)."""
    cells = [c for c in nbformat.read(nb, as_version=4).cells if "parameters" in c.metadata.get("tags", [])]
    if len(cells) != 1: raise SystemExit(f"{nb}: needs exactly one cell tagged `parameters`, found {len(cells)}")
    tree = ast.parse(cells[0].source)
    return [t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)]


@functools.lru_cache(maxsize=None)
def _fingerprint_path(p: Path) -> str | None:
    "Fingerprint of a local folder or file, once per run of this tool (a large music folder is read once, not per stage)."
    try:
        if p.is_dir(): return tree_fingerprint(p)
        if p.is_file(): return file_sha256(p)[:16]
    except OSError: pass
    return None


def path_fingerprints(params: dict) -> dict:
    "Fingerprints of the local files and folders that parameter values name (model folders, audio folders, manifests)."
    out = {}
    for k, v in params.items():
        if not isinstance(v, str) or not v.strip() or "\n" in v or len(v) > 500: continue
        spec = v.split(":", 1)[1] if v.startswith(("hf:", "audiocraft:")) else v
        p = resolve_path("data/models/demo") if (k == "model" and v == "demo") else resolve_path(spec)
        if (fp := _fingerprint_path(p)) is not None: out[k] = fp
    return out


def stage_inputs(nb: Path, params: dict, prev: str | None, lib: str) -> dict:
    return {"notebook": file_sha256(nb)[:16], "library": lib, "params": params, "paths": path_fingerprints(params), "prev": prev}


def run_stage(nb: Path, params: dict, lay: RunLayout, stage: str) -> bool:
    pfile = lay.root / "params" / f"{stage}.yaml"
    pfile.parent.mkdir(parents=True, exist_ok=True)
    pfile.write_text(yaml.safe_dump(params, sort_keys=False))
    part, out, log = lay.root / f"{stage}.part.ipynb", lay.root / f"{stage}.ipynb", lay.root / f"{stage}.log"
    cmd = [str(Path(sys.executable).parent / "papermill"), "--cwd", str(nb.parent), "-f", str(pfile), str(nb), str(part),
           "--log-output", "--no-progress-bar"]
    # the kernel draws inline (figures in the executed copy, where they are drawn), whatever MPLBACKEND scripts use
    with open(log, "w") as f: ok = subprocess.run(cmd, stdout=f, stderr=subprocess.STDOUT, env=kernel_env()).returncode == 0
    if ok:
        os.replace(part, out); (lay.root / f"{stage}.failed.ipynb").unlink(missing_ok=True)
    else:
        if part.exists(): os.replace(part, lay.root / f"{stage}.failed.ipynb")
        print("".join(log.read_text().splitlines(keepends=True)[-40:]), file=sys.stderr)
        print(f"== {stage} failed: see {log} and {lay.root / f'{stage}.failed.ipynb'}", file=sys.stderr)
    return ok


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("config", help="parameter file, e.g. params/demo.yaml; the run is named after its stem")
    ap.add_argument("--stages", nargs="+", required=True, help="stage notebooks (names under nbs/, without .ipynb), in order")
    ap.add_argument("--force", action="store_true", help="rerun every stage")
    a = ap.parse_args(argv)
    cfg_file = resolve_path(a.config)
    if not cfg_file.is_file(): raise SystemExit(f"{cfg_file}: no such parameter file")
    values = yaml.safe_load(cfg_file.read_text()) or {}
    if not isinstance(values, dict): raise SystemExit(f"{cfg_file}: a parameter file is a mapping of name: value")
    run = cfg_file.stem
    lay, lib, prev, timings = RunLayout(run), library_fingerprint(), None, {}
    lay.root.mkdir(parents=True, exist_ok=True)
    for stage in a.stages:
        nb = repo_root() / "nbs" / f"{stage}.ipynb"
        if not nb.is_file(): raise SystemExit(f"{nb}: no such stage notebook")
        names = declared_params(nb)
        params = {k: values[k] for k in names if k in values}
        if "config" in names: params["config"] = run
        inputs = stage_inputs(nb, params, prev, lib)
        stamp = lay.stamp(stage)
        if not a.force and fresh(stamp, inputs) and (lay.root / f"{stage}.ipynb").is_file():
            print(f"== {stage}: inputs unchanged, skipped"); prev = fingerprint(inputs); continue
        print(f"== {stage} ({run})", flush=True)
        t0 = time.time()
        if not run_stage(nb, params, lay, stage): return 1
        timings[stage] = round(time.time() - t0, 1)
        print(f"   {timings[stage]} s", flush=True)
        write_stamp(stamp, inputs); prev = fingerprint(inputs)
    if timings:
        tfile = lay.root / "timings.json"
        old = json.loads(tfile.read_text()) if tfile.is_file() else {}
        write_json_atomic(tfile, {**old, **timings})
    print(f"executed notebooks in {lay.root}/, figures in {lay.figures}/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
