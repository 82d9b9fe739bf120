"""Render the compendium as a static site: the landing page, one page per notebook with its API docs, the run's report.

    python tools/build_docs.py [--run runs/demo] [--out _docs] [--jobs 2] [--no-cache]

This is `make docs`. Every `nbs/*.ipynb` gets a page `<out>/<name>.html` (nbconvert's HTML exporter: figures inline,
audio players kept as the HTML outputs they are, `show_doc` output rendered as the markdown it is):

- the run's executed copy `runs/<config>/<name>.ipynb` when there is one (what `make demo` / `make reproduce` wrote,
  outputs included; a note says when the notebook changed after that copy was made);
- otherwise a library notebook (`00a_paper`, `05a_browser`, …) is executed at its test-size defaults, from `nbs/` as
  `nbdev_test` runs it (cells flagged with settings.ini's `tst_flags` or `#| eval: false` are skipped);
- a stage notebook (`00_core` … `09_human_study`) the run did not execute gets only the cells its API docs need
  (exported cells, imports, `show_doc` calls): running a stage would write into a run.

Executed notebooks are kept in `<out>/.cache/`, stamped with the notebook's bytes and the library's source, and reused
while both are unchanged, so a second `make docs` only renders.

Pages read as nbdev's docs do: `#|` directive lines and `#| hide` cells are left out, `show_doc` cells show their
output only, links to `*.ipynb` point at the pages. `<out>/index.html` is `nbs/index.ipynb` followed by the list of
every page, a link to the run's feature atlas when it has one (`<out>/atlas/`: the atlas' page shell, reading the run's
data and audio in place) and the run's `report.md` rendered as HTML (its figures copied beside it).
"""
import argparse
import ast
import configparser
import functools
import html
import os
import re
import shutil
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import mistune
import nbformat
from nbclient import NotebookClient
from nbclient.exceptions import CellExecutionError, CellTimeoutError, DeadKernelError
from nbconvert import HTMLExporter
from nbconvert.filters import clean_html
from nbconvert.preprocessors import TagRemovePreprocessor

from musicsae.core import RunLayout, library_fingerprint

ROOT = Path(__file__).resolve().parents[1]
NBS = ROOT / "nbs"
STAGE = re.compile(r"^\d\d_")          # stage notebooks 00_core … 09_human_study; library ones are 00a_paper, 05a_browser, …
EXPORT = {"export", "exports", "exporti", "exec_doc"}
_MD_ESCAPED = mistune.create_markdown(escape=True)      # markdown whose raw HTML is shown as text


@functools.cache
def nbdev_test_skips() -> frozenset[str]:
    "The directives `nbdev_test` skips (settings.ini `tst_flags`: slow, gpu, internet, …)."
    cp = configparser.ConfigParser()
    cp.read(ROOT / "settings.ini")
    return frozenset(cp.get("DEFAULT", "tst_flags", fallback="notest").split()) | {"notest"}


def _split(source: str) -> tuple[dict[str, str], str]:
    "A code cell's leading `#| name value` lines as {name: value} (`#| eval: false` → {'eval': 'false'}), and the rest."
    d, lines = {}, source.splitlines()
    for i, line in enumerate(lines):
        m = re.match(r"^#\|\s*([\w-]+):?\s*(.*)$", line.strip())
        if not m: return d, "\n".join(lines[i:])
        d[m.group(1)] = m.group(2).strip()
    return d, ""


def directives(source: str) -> dict[str, str]:
    "The `#|` directives a code cell starts with."
    return _split(source)[0]


def _calls_show_doc(tree) -> bool:
    return any(isinstance(n, ast.Call) and getattr(n.func, "id", getattr(n.func, "attr", "")) == "show_doc"
               for n in ast.walk(tree))


def _parse(source: str):
    try: return ast.parse(source)
    except SyntaxError: return None                       # `%magic`, `!shell`: neither an import nor an API cell


def runs_at_test_size(cell) -> bool:
    "Whether `nbdev_test` runs this code cell."
    d = directives(cell.source)
    return d.get("eval", "").lower() != "false" and not (d.keys() & nbdev_test_skips())


def api_cell(cell) -> bool:
    """Whether a cell is needed for the notebook's API docs: exported code, cells of imports only, `show_doc` calls (what
    nbdev's docs execute, less cells that mix imports with work: in a stage notebook that work reads or writes a run)."""
    d = directives(cell.source)
    if d.get("eval", "").lower() == "false": return False
    if d.keys() & EXPORT: return True
    tree = _parse(cell.source)
    return tree is not None and bool(tree.body) and (all(isinstance(n, (ast.Import, ast.ImportFrom)) for n in tree.body)
                                                     or _calls_show_doc(tree))


class _Client(NotebookClient):
    "nbclient, running only the code cells `keep(cell)` selects (as nbdev_test skips flagged cells)."
    def __init__(self, nb, keep, **kw):
        super().__init__(nb, **kw)
        self._keep = keep

    async def async_execute_cell(self, cell, cell_index, execution_count=None, store_history=True):
        if cell.cell_type != "code" or not self._keep(cell): return cell
        return await super().async_execute_cell(cell, cell_index, execution_count, store_history)


def execute(path: Path, mode: str, timeout: int = 300):
    """Execute notebook `path` in a fresh kernel from `nbs/` (its cwd under nbdev_test). mode 'test' runs what nbdev_test
    runs and stops at the first error; 'api' runs only what the API docs need (with `show_doc` imported first, as nbdev's
    docs do) and goes on past errors: a `show_doc` of a name that a skipped cell defines shows its error in place.
    Returns (notebook with outputs, error text or '')."""
    from musicsae.core import kernel_env
    nb = nbformat.read(path, as_version=4)
    keep = runs_at_test_size if mode == "test" else (lambda c: runs_at_test_size(c) and api_cell(c))
    if not any(c.cell_type == "code" and keep(c) for c in nb.cells): return nb, ""
    if mode == "api": nb.cells.insert(0, nbformat.v4.new_code_cell("from nbdev.showdoc import show_doc"))
    client = _Client(nb, keep, timeout=timeout, kernel_name="python3", allow_errors=mode == "api",
                     resources={"metadata": {"path": str(path.parent)}},
                     extra_arguments=["--IPKernelApp.log_level=ERROR"])    # not its warning about TCP, once per notebook
    try: client.execute(env=kernel_env()); err = ""   # figures inline, even under the Makefile's MPLBACKEND=Agg
    except (CellExecutionError, CellTimeoutError, DeadKernelError) as e: err = str(e).strip()[-2000:]
    if mode == "api": client.nb.cells.pop(0)
    return client.nb, err


def cached_execute(path: Path, mode: str, cache: Path | None, execute_fn=execute, library: str = ""):
    """`execute_fn(path, mode)`, reusing the copy in `cache` when its stamp records the same notebook bytes, library
    source and mode (core's provenance rule: never file times). A failed execution is not kept."""
    if cache is None: return execute_fn(path, mode)
    from musicsae.core import file_sha256, fresh, replace_atomic, write_stamp
    inputs = {"notebook": file_sha256(path)[:16], "library": library or library_fingerprint(ROOT / "musicsae"), "mode": mode,
              "skip": sorted(nbdev_test_skips())}
    copy, stamp = cache / f"{path.stem}.{mode}.ipynb", cache / f"{path.stem}.{mode}.json"
    if copy.is_file() and fresh(stamp, inputs): return nbformat.read(copy, as_version=4), ""
    nb, err = execute_fn(path, mode)
    if not err:
        cache.mkdir(parents=True, exist_ok=True)
        tmp = copy.with_suffix(".tmp")
        nbformat.write(nb, tmp); replace_atomic(tmp, copy); write_stamp(stamp, inputs)
    return nb, err


def _title(nb, fallback):
    for c in nb.cells:
        if c.cell_type == "markdown":
            m = re.search(r"^#\s+(.+)$", c.source, re.M)
            if m: return m.group(1).strip()
    return fallback


def _summary(nb):
    "The notebook's one-sentence summary: the first markdown blockquote (`> …`, over one or more lines)."
    for c in nb.cells:
        if c.cell_type == "markdown":
            m = re.search(r"^>.*(?:\n>.*)*", c.source, re.M)
            if m: return " ".join(l.lstrip(">").strip() for l in m.group(0).splitlines()).strip()
    return ""


def _assigned(source: str) -> list[tuple[str, int, int]]:
    "(name, first line, last line) of each top-level `name = …` in `source`."
    tree = _parse(source)
    if tree is None: return []
    return [(t.id, n.lineno, n.end_lineno) for n in tree.body if isinstance(n, ast.Assign)
            for t in n.targets if isinstance(t, ast.Name)]


def declared_only(nb) -> int:
    """Keep in the injected-parameters cell only the names the notebook's `parameters` cell declares (a run made before
    tools/reproduce.py passed each stage its own parameters injected the whole parameter file). Returns how many went."""
    declared = {n for c in nb.cells if "parameters" in c.metadata.get("tags", []) for n, _, _ in _assigned(c.source)}
    dropped = 0
    for c in nb.cells:
        if "injected-parameters" not in c.metadata.get("tags", []) or not declared: continue
        lines, drop = c.source.splitlines(), set()
        for name, a, b in _assigned(c.source):
            if name not in declared: drop |= set(range(a - 1, b)); dropped += 1
        if dropped:
            c.source = "\n".join([l for i, l in enumerate(lines) if i not in drop]
                                 + [f"# ({dropped} parameters of the parameter file that this notebook does not declare left out)"])
    return dropped


def _only_show_doc(tree) -> bool:
    return tree is not None and bool(tree.body) and all(
        isinstance(s, ast.Expr) and isinstance(s.value, ast.Call) and getattr(s.value.func, "id", "") == "show_doc"
        for s in tree.body)


def for_reading(nb):
    """The notebook as nbdev's docs show it: no directive lines, no `#| hide` cells, a cell of `show_doc` calls as its
    output only (a cell that also tests or computes keeps its input)."""
    cells = []
    for c in nb.cells:
        if c.cell_type != "code": cells.append(c); continue
        d, body = _split(c.source)
        if "hide" in d: continue
        body = body.strip("\n")
        if not body and not c.get("outputs"): continue   # e.g. the `#| default_exp` cell
        c.source = body
        if d.get("echo", "").lower() == "false" or _only_show_doc(_parse(body)):
            c.metadata["tags"] = c.metadata.get("tags", []) + ["remove_input"]
        cells.append(c)
    nb.cells = cells
    return nb


def _links_to_pages(body: str, pages: set[str]) -> str:
    "Links to `X.ipynb` (as the notebooks write them) → `X.html` for every X that has a page."
    return re.sub(r'href="(?:\./)?([\w.-]+)\.ipynb(#[^"]*)?"',
                  lambda m: f'href="{m.group(1)}.html{m.group(2) or ""}"' if m.group(1) in pages else m.group(0), body)


def _inline(md: str) -> str:
    "One line of markdown (a title, a summary: `code`, *emphasis*) as inline HTML."
    return re.sub(r"^<p>(.*)</p>$", r"\1", _MD_ESCAPED(md).strip(), flags=re.S)


def _insert(body: str, top: str = "", bottom: str = "") -> str:
    "Put HTML at the top and bottom of the page's `<main>` (the lab template's notebook body)."
    if top: body = body.replace("<main>", "<main>\n" + top, 1)
    if bottom: i = body.rfind("</main>"); body = body[:i] + bottom + "\n" + body[i:]
    return body


def _block(inner: str) -> str:
    "HTML in the lab template's rendered-markdown style."
    return ('<div class="jp-Cell jp-MarkdownCell jp-Notebook-cell"><div class="jp-Cell-inputWrapper">'
            f'<div class="jp-RenderedHTMLCommon jp-RenderedMarkdown jp-MarkdownOutput">{inner}</div></div></div>')


def report_html(report: Path, out: Path) -> str:
    "The run's report.md as HTML (mistune, which nbconvert already uses for markdown), its local images copied to out/."
    body = mistune.html(report.read_text(encoding="utf-8"))
    figs = out / "report_files"

    def local(m):
        src = html.unescape(m.group(1))
        if re.match(r"^([a-z]+:|/|#)", src): return m.group(0)
        f = (report.parent / src).resolve()
        if not f.is_file(): return m.group(0)
        figs.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(f, figs / f.name)
        return f'src="report_files/{html.escape(f.name)}"'
    return re.sub(r'src="([^"]+)"', local, body)


def _stale(run: Path, path: Path) -> bool:
    "Whether the run's stamp for this stage records a different version of the notebook than nbs/ holds now."
    from musicsae.core import RunLayout, file_sha256, read_stamp
    stamp = RunLayout(run.name, folder=str(run)).stamp(path.stem)
    if not stamp.is_file(): return False
    rec = (read_stamp(stamp) or {}).get("inputs", {}).get("notebook")
    return bool(rec) and rec != file_sha256(path)[:16]


def sources(run: Path, nbs: list[Path]):
    """What each notebook's page is made from, as (kind, why): 'executed' (the run's copy), 'test' (a library notebook run
    at test size), 'api' (a stage the run did not execute: its API cells only) or 'none' (the index: markdown only)."""
    out = {}
    for p in nbs:
        copy = run / p.name
        if copy.is_file(): out[p] = ("executed", f"executed in {run.name}")
        elif p.stem == "index": out[p] = ("none", "")
        elif STAGE.match(p.stem): out[p] = ("api", f"API only: `{run.name}` did not run this stage")
        else: out[p] = ("test", "executed at its test-size defaults")
    return out


def _clean_unless_highlighted(text):
    """nbconvert's `clean_html` (bleach), except on the code inputs pygments has already escaped: bleach re-parsing every
    highlighted cell is half of a page's rendering time, and these inputs are the project's own notebooks."""
    s = str(text)
    return s if re.match(r'<div class="[^"]*\bhighlight\b[^"]*"><pre>', s) else clean_html(s)


@functools.cache
def _exporter() -> HTMLExporter:
    ex = HTMLExporter(template_name="lab")
    ex.register_preprocessor(TagRemovePreprocessor(remove_input_tags={"remove_input"}), enabled=True)
    ex.register_filter("clean_html", _clean_unless_highlighted)
    return ex


def render(p: Path, run: Path, kind: str, why: str, pages: set[str], cache: Path | None = None, execute_fn=execute,
           library: str = "") -> dict:
    """The page of notebook `p` rendered from `kind` (see `sources`): {'html', 'title', 'summary', 'failed'}. Executes
    the notebook first where `kind` says so, with `execute_fn(path, mode)` → (nb, error), through `cache`."""
    notes, failed = [_inline(why)] if why else [], False
    if kind == "executed":
        nb = nbformat.read(run / p.name, as_version=4)
        if _stale(run, p):
            notes.append(f"This copy was executed from an earlier version of <code>nbs/{p.name}</code>; "
                         f"<code>make reproduce</code> for this run refreshes it.")
        declared_only(nb)
    elif kind == "none": nb = nbformat.read(p, as_version=4)
    else:
        nb, err = cached_execute(p, kind, cache, execute_fn, library)
        if err:
            failed = kind == "test"          # a notebook that fails under nbdev_test; 'api' errors show in place
            notes.append(f"Executing <code>nbs/{p.name}</code> failed; the page shows it up to the failing cell:"
                         f"<pre>{html.escape(err)}</pre>")
    title, summary = _title(nb, p.stem), _summary(nb)
    body, _ = _exporter().from_notebook_node(for_reading(nb), resources={"metadata": {"name": title}})
    if p.stem != "index":
        nav = f'<p><a href="index.html">musicsae</a> · <code>nbs/{p.name}</code>' + "".join(f"<br>{n}" for n in notes) + "</p>"
        body = _insert(body, top=_block(nav))
    return {"html": _links_to_pages(body, pages), "title": title, "summary": summary, "failed": failed}


def _render(args): return render(*args)


def atlas_block(run: Path, out: Path) -> str:
    """The run's feature atlas (`python -m musicsae.atlas`, 09's atlas cell: `RunLayout.atlas`) linked from the landing page: its shell copied
    to out/atlas/ with paths back to the run's data, spectrograms and audio (nothing else is copied); '' if it has none."""
    atlas = RunLayout(run.name, folder=str(run)).atlas
    shutil.rmtree(out / "atlas", ignore_errors=True)
    if not (atlas / "index.html").is_file(): return ""
    from musicsae.atlas import write_shell
    write_shell(atlas, out / "atlas")
    return _block(f'<h2 id="atlas">Feature atlas</h2><p><a href="atlas/index.html">Every retained feature of '
                  f'<code>{html.escape(run.name)}</code></a>: search by label, layer, density or concept; each feature\'s top '
                  f'clips with their activation over time, labels, steering and nearest features. It reads the run\'s files '
                  f'in place (<code>{html.escape(str(atlas))}/</code>).</p>')


def build(run: Path, out: Path, nbs_dir: Path = NBS, jobs: int = 2, execute_fn=execute, cache: bool = True) -> Path:
    """Write out/<name>.html for every notebook in `nbs_dir` and out/index.html; returns the index. Executed notebooks are
    kept in out/.cache/ and reused while the notebook and the library are unchanged (`cache=False`: execute anew).
    `execute_fn(path, mode)` → (nb, error) replaces the executor (tests: pass `jobs=1`). Exits naming the notebooks
    that failed under test-size execution, after writing every page."""
    run, out = Path(run), Path(out)
    nbs = sorted(nbs_dir.glob("*.ipynb"))
    if not nbs: sys.exit(f"build_docs: no notebooks in {nbs_dir}")
    out.mkdir(parents=True, exist_ok=True)
    for old in out.glob("*.html"): old.unlink()
    shutil.rmtree(out / "report_files", ignore_errors=True)
    how, pages, lib = sources(run, nbs), {p.stem for p in nbs} | {"index"}, library_fingerprint(ROOT / "musicsae")
    work = [(p, run, *how[p], pages, out / ".cache" if cache else None, execute_fn, lib) for p in nbs]
    if jobs > 1:
        with ProcessPoolExecutor(jobs) as ex: done = list(ex.map(_render, work))
    else: done = [render(*w) for w in work]

    rows, index = [], None
    for p, r in zip(nbs, done):
        if p.stem == "index": index = r; continue
        (out / f"{p.stem}.html").write_text(r["html"], encoding="utf-8")
        summary = " — " + _inline(r["summary"]) if r["summary"] else ""
        rows.append(f'<li><a href="{p.stem}.html">{html.escape(p.stem)}</a> — {_inline(r["title"])}{summary} '
                    f'<small>({_inline(how[p][1])})</small></li>')
    extra = _block(f"<h2>Every notebook</h2><ul>{''.join(rows)}</ul>") + atlas_block(run, out)
    report = run / "report.md"
    if report.is_file():
        extra += _block(f'<h2 id="report">Report of <code>{html.escape(run.name)}</code></h2>{report_html(report, out)}')
    page = index["html"] if index else ("<!doctype html><html><head><meta charset='utf-8'><title>musicsae</title></head>"
                                        "<body><main><h1>musicsae</h1></main></body></html>")
    (out / "index.html").write_text(_insert(page, bottom=extra), encoding="utf-8")
    failed = [p.name for p, r in zip(nbs, done) if r["failed"]]
    if failed: sys.exit(f"build_docs: executing {', '.join(failed)} failed (see their pages in {out}); run them with nbdev_test")
    return out / "index.html"


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--run", default=str(ROOT / "runs" / "demo"), help="run folder whose executed notebooks and report to show")
    ap.add_argument("--out", default=str(ROOT / "_docs"))
    ap.add_argument("--jobs", type=int, default=min(4, os.cpu_count() or 1), help="pages made at once")
    ap.add_argument("--no-cache", action="store_true", help="execute the notebooks anew, not reusing out/.cache")
    a = ap.parse_args(argv)
    run = Path(a.run)
    if not any(run.glob("*.ipynb")):
        print(f"build_docs: {run} holds no executed notebooks (`make demo` or `make reproduce CONFIG=…` makes them): "
              f"stage pages show their API only, and there is no report", file=sys.stderr)
    print(f"docs: {build(run, Path(a.out), jobs=a.jobs, cache=not a.no_cache)}")


if __name__ == "__main__":
    main()
