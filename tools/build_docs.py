"""Render the executed notebooks of a run as a static documentation site.

    python tools/build_docs.py [--run runs/demo] [--out _docs]

Uses `nbdev_docs` when Quarto is installed; otherwise (no registry here provides Quarto) converts the
executed notebooks in runs/<config>/ with nbconvert's HTML exporter (figures inline, audio players kept as
the HTML outputs they are) and writes an index page linking them in order, with report.md on it if present.
"""
import argparse
import html
import re
import shutil
import subprocess
import sys
from pathlib import Path

import mistune
import nbformat
from nbconvert import HTMLExporter

ROOT = Path(__file__).resolve().parents[1]


def _title(nb, fallback):
    for c in nb.cells:
        if c.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", c.source, re.M)
            if m: return m.group(1).strip()
    return fallback


def _summary(nb):
    for c in nb.cells:
        if c.cell_type == "markdown":
            m = re.search(r"^>\s*(.+)$", c.source, re.M)
            if m: return m.group(1).strip()
    return ""


def build_static(run: Path, out: Path) -> Path:
    nbs = sorted(p for p in run.glob("*.ipynb") if not p.name.endswith((".part.ipynb", ".failed.ipynb")))
    if not nbs: sys.exit(f"build_docs: no executed notebooks in {run} (run `make demo` first)")
    out.mkdir(parents=True, exist_ok=True)
    exporter = HTMLExporter(template_name="lab")
    rows = []
    for p in nbs:
        nb = nbformat.read(p, as_version=4)
        body, _ = exporter.from_notebook_node(nb)
        (out / f"{p.stem}.html").write_text(body, encoding="utf-8")
        rows.append(f'<li><a href="{p.stem}.html">{html.escape(_title(nb, p.stem))}</a> — {html.escape(_summary(nb))}</li>')
    report = run / "report.md"
    # the report as HTML (mistune, which nbconvert already uses for markdown cells), not a preformatted block
    rep = f"<h2>Report</h2>{mistune.html(report.read_text())}" if report.exists() else ""
    index = (f"<!doctype html><html><head><meta charset='utf-8'><title>musicsae — {run.name}</title></head><body>"
             f"<h1>musicsae — executed notebooks ({html.escape(run.name)})</h1><ol>{''.join(rows)}</ol>{rep}</body></html>")
    (out / "index.html").write_text(index, encoding="utf-8")
    return out / "index.html"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"))
    ap.add_argument("--out", default=str(ROOT / "_docs"))
    a = ap.parse_args(argv)
    if shutil.which("quarto"):
        subprocess.check_call([str(Path(sys.executable).parent / "nbdev_docs")], cwd=ROOT)
        return
    print(f"docs: {build_static(Path(a.run), Path(a.out))}")


if __name__ == "__main__":
    main()
