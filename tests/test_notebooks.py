"""The notebooks are the source: check the conventions every stage notebook must keep."""
import json
import re
import subprocess
import sys
from pathlib import Path

import nbformat
import pytest

ROOT = Path(__file__).resolve().parents[1]
NBS = sorted((ROOT / "nbs").rglob("*.ipynb"))
STAGES = [p for p in NBS if re.match(r"\d\d_", p.name)]


def test_ten_stage_notebooks():
    assert [p.name[:2] for p in STAGES if p.parent.name == "nbs" and p.name[2] == "_"] == [f"{i:02d}" for i in range(10)]


@pytest.mark.parametrize("path", NBS, ids=lambda p: str(p.relative_to(ROOT / "nbs")))
def test_notebook_is_clean(path):
    nb = nbformat.read(path, as_version=4)
    code = [c for c in nb.cells if c.cell_type == "code"]
    assert all(not c.outputs and c.execution_count is None for c in code), f"{path.name} has outputs: run nbdev_clean"
    assert nb.metadata.get("kernelspec", {}).get("name") == "python3"
    if path.name == "index.ipynb": return  # the landing page: prose only
    first_code = code[0].source
    assert first_code.startswith("#| default_exp "), f"{path.name}: first code cell must be `#| default_exp <module>`"


@pytest.mark.parametrize("path", STAGES, ids=lambda p: p.name)
def test_one_parameters_cell_with_plain_assignments(path):
    nb = nbformat.read(path, as_version=4)
    params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
    assert len(params) == 1, f"{path.name}: exactly one papermill `parameters` cell"
    for line in params[0].source.splitlines():
        line = line.split("#")[0].strip()
        assert not line or re.match(r"^[A-Za-z_]\w*\s*=", line), f"{path.name}: parameters cell has {line!r}"
    assert "config" in params[0].source, f"{path.name}: parameters need `config`"


def test_exported_cells_never_use_parameters():
    "An exported cell that reads a parameter variable would break the library outside the notebook."
    for path in STAGES:
        nb = nbformat.read(path, as_version=4)
        params = [c for c in nb.cells if "parameters" in c.metadata.get("tags", [])]
        names = {m.group(1) for c in params for m in re.finditer(r"^([A-Za-z_]\w*)\s*=", c.source, re.M)}
        for c in nb.cells:
            if c.cell_type != "code" or not re.match(r"#\|\s*export", c.source): continue
            src = re.sub(r"(#.*|\"\"\"[\s\S]*?\"\"\"|'[^'\n]*'|\"[^\"\n]*\")", "", c.source)
            defined = set(re.findall(r"\b(?:def|class)\s+(\w+)|^(\w+)\s*=", src, re.M))
            for n in names - {"config", "seed", "device"}:
                # a bare module-level use (not an argument, attribute or keyword) of a parameter name
                for m in re.finditer(rf"(?<![\w.]){n}(?!\w|\s*=[^=])", src):
                    line = src[src.rfind("\n", 0, m.start()) + 1: src.find("\n", m.end())]
                    if not line.startswith((" ", "\t")) and not re.match(r"\s*(def|class|@)", line):
                        pytest.fail(f"{path.name}: exported cell uses parameter {n!r}: {line.strip()}")


def test_settings_keep_parameters_tag():
    ini = (ROOT / "settings.ini").read_text()
    assert re.search(r"^allowed_cell_metadata_keys\s*=\s*tags", ini, re.M)
    # nbdev 2.4's clear_all wipes all cell metadata, papermill's tag included
    assert re.search(r"^clear_all\s*=\s*False", ini, re.M)


def test_bench_dispatcher_lists_stages():
    out = subprocess.run([sys.executable, "-m", "musicsae.bench"], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 2 and "usage: python -m musicsae.bench" in out.stdout


def _stage_of_modules() -> dict:
    "musicsae.<module> → the number of the stage notebook that exports it (sub-notebooks such as 06a count as stage 06)."
    out = {}
    for path in (p for p in NBS if p.parent.name == "nbs" and re.match(r"\d\d", p.name)):
        for c in nbformat.read(path, as_version=4).cells:
            for mod in re.findall(r"^#\|[ \t]*(?:default_exp|export)[ \t]+([\w.]+)", c.source, re.M):
                out.setdefault(f"musicsae.{mod}", int(path.name[:2]))
    return out


def _imports(path: Path, module: str) -> set:
    "The musicsae modules `path` imports, at module level or inside functions."
    import ast
    found = set()
    for n in ast.walk(ast.parse(path.read_text())):
        if isinstance(n, ast.Import): names = [a.name for a in n.names]
        elif isinstance(n, ast.ImportFrom):
            base = n.module or ""
            if n.level: base = ".".join(module.split(".")[:-n.level] + ([base] if base else []))
            names = [f"{base}.{a.name}" for a in n.names] + [base]
        else: continue
        found |= {m for m in names if m.startswith("musicsae.")}
    return found


def test_no_import_from_a_lower_stage_to_a_later_one():
    # defect guarded (issue 15, "no import from a lower stage to a later one"): data flows one way, so a stage's module
    # never imports a later stage's module, not even inside a function (the browser, 05a, imported the labeling stage, 06,
    # to read a labels file), and the library never imports the benchmarks; then no import circle can span two stages
    stage = _stage_of_modules()
    assert stage["musicsae.data"] == 1 and stage["musicsae.demo.labelers"] == 2 and stage["musicsae.study_server"] == 9
    assert stage["musicsae.midi"] == 1 and stage["musicsae.demo.corpus"] == 1
    bad = []
    for path in sorted(p for p in (ROOT / "musicsae").rglob("*.py") if "bench" not in p.parts):   # the demo wing too
        here = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        for other in _imports(path, here):
            if other.startswith("musicsae.bench"): bad.append(f"{here} imports {other}")
            elif here in stage and other in stage and stage[here] < stage[other]:
                bad.append(f"{here} (stage {stage[here]:02d}) imports {other} (stage {stage[other]:02d})")
    assert not bad, bad


def test_nothing_outside_the_demo_wing_imports_it():
    # issue 25: the demo (corpus, model, codec, conditioning, labellers, gates) lives in musicsae/demo/ and nothing on
    # the paper's path imports it, not even inside a function; models and data name its loader and builder by string
    # ('musicsae.demo.model:load_demo_model', 'musicsae.demo.corpus:demo_corpus') and import them on first use
    bad = []
    for path in sorted((ROOT / "musicsae").rglob("*.py")):
        parts = path.relative_to(ROOT / "musicsae").parts
        if parts[0] in ("demo", "bench"): continue   # the wing itself; the benchmarks sit beside the library
        here = ".".join(("musicsae", *path.relative_to(ROOT / "musicsae").with_suffix("").parts))
        bad += [f"{here} imports {m}" for m in _imports(path, here) if m == "musicsae.demo" or m.startswith("musicsae.demo.")]
    assert not bad, bad
    assert not list((ROOT / "musicsae").glob("demo_*.py")), "the demo's modules live in musicsae/demo/"
