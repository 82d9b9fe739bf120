"""`make docs` (tools/build_docs.py): a page per notebook with its API docs, an index linking them all, the report as HTML."""
import functools
import html
import importlib
import importlib.util
import inspect
import re
import sys
from pathlib import Path

import nbformat
import pytest

from musicsae.core import write_stamp

ROOT = Path(__file__).resolve().parents[1]
spec = importlib.util.spec_from_file_location("build_docs", ROOT / "tools" / "build_docs.py")
bd = sys.modules["build_docs"] = importlib.util.module_from_spec(spec)     # by name: its pages are made in worker processes
spec.loader.exec_module(bd)


def _text(page: str) -> str:
    "A page's text as a reader sees it: tags dropped, entities decoded, whitespace collapsed."
    return re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", "", page)))


def _documented():
    "The first notebook with a `show_doc(name)` cell whose object has a docstring: (path, name, first docstring line)."
    for p in sorted((ROOT / "nbs").glob("*.ipynb")):
        src = p.read_text()
        mod = re.search(r"#\| default_exp ([\w.]+)", src)
        for name in re.findall(r"show_doc\((\w+)\)", src) if mod else []:
            obj = getattr(importlib.import_module(f"musicsae.{mod.group(1)}"), name, None)
            if obj is not None and inspect.getdoc(obj): return p, name, inspect.getdoc(obj).splitlines()[0]
    pytest.skip("no notebook calls show_doc yet")


@pytest.fixture(scope="module")
def site(tmp_path_factory):
    """The docs of a fake run: an executed (and since edited) copy of 01_data with a stray injected parameter and an
    output of its own, a report.md with a table and a figure; one notebook executed for real (its API cells), the
    others rendered unexecuted."""
    tmp = tmp_path_factory.mktemp("docs")
    run, out = tmp / "runs" / "fake", tmp / "_docs"
    run.mkdir(parents=True)
    nb = nbformat.read(ROOT / "nbs" / "01_data.ipynb", as_version=4)
    at = next(i for i, c in enumerate(nb.cells) if "parameters" in c.metadata.get("tags", []))
    inj = nbformat.v4.new_code_cell('# Parameters\nconfig = "fake"\nsteer_alphas = [1, 2]\nn_clips = 7\n')
    inj.metadata["tags"] = ["injected-parameters"]
    nb.cells.insert(at + 1, inj)
    code = next(c for c in nb.cells[at + 2:] if c.cell_type == "code" and "#| hide" not in c.source)
    code.outputs = [nbformat.v4.new_output("stream", name="stdout", text="OUTPUT FROM THE RUN\n")]
    nbformat.write(nb, run / "01_data.ipynb")
    write_stamp(run / "stamps" / "01_data.json", {"notebook": "0" * 16})
    (tmp / "figs").mkdir(); (tmp / "figs" / "f.png").write_bytes(b"\x89PNG fake")
    (run / "report.md").write_text("# report of fake\n\n## Against the paper\n\n| measure | ours |\n|---|---|\n"
                                   "| probe % | 28.1 |\n\n![fig](../../figs/f.png)\n")
    real, name, doc = _documented()
    execute = functools.partial(_execute_one, real=real)
    index = bd.build(run, out, jobs=2, execute_fn=execute, cache=False)
    return dict(out=out, index=index.read_text(), real=real, name=name, doc=doc)


def _execute_one(path, mode, real):
    "The executor for the fixture's build: `real` runs for real (its API cells), every other notebook stays unexecuted."
    return bd.execute(path, "api") if path == real else (nbformat.read(path, as_version=4), "")


def test_every_notebook_has_a_page_linked_from_the_index(site):
    "Defect: the site held only the run's executed stage notebooks, so library notebooks (00a, 05a, 06a–c, 09a…) had no page."
    nbs = sorted((ROOT / "nbs").glob("*.ipynb"))
    assert len(nbs) > 10
    assert (site["out"] / "index.html").is_file()
    for p in nbs:
        if p.stem == "index": continue
        assert (site["out"] / f"{p.stem}.html").is_file(), f"no page for {p.name}"
        assert f'href="{p.stem}.html"' in site["index"], f"index does not link {p.stem}.html"
    # links the notebooks write to each other (the index's map: 00_core.ipynb) point at the pages
    assert not re.search(r'href="[\w.-]+\.ipynb', site["index"])
    # stage notebooks the run did not execute get their API cells only; library notebooks run at test size
    how = bd.sources(site["out"].parent / "runs" / "fake", nbs)
    assert how[ROOT / "nbs" / "04_train_sae.ipynb"][0] == "api" and how[ROOT / "nbs" / "00a_paper.ipynb"][0] == "test"
    assert how[ROOT / "nbs" / "01_data.ipynb"][0] == "executed"


def test_show_doc_output_is_on_the_page(site):
    "Defect: no page documented the API; a `show_doc` cell must render the signature and the docstring, not its call."
    page = (site["out"] / f"{site['real'].stem}.html").read_text()
    at = page.find(f'id="{site["name"]}"')
    assert at > 0, f"no show_doc heading for {site['name']} in {site['real'].name}"
    assert site["doc"].replace("`", "").replace("*", "") in _text(page[at:]).replace("*", "")
    assert "#| export" not in _text(page) and "#| default_exp" not in _text(page)


def test_pages_read_as_nbdev_docs():
    "A cell of `show_doc` calls shows its output only; `#| hide` cells and directive lines are left out."
    nb = nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_code_cell("#| default_exp thing"),
        nbformat.v4.new_code_cell("#| hide\nfrom nbdev.showdoc import show_doc  # HIDDEN"),
        nbformat.v4.new_code_cell("#| export\ndef thing(): 'Make a thing.'"),
        nbformat.v4.new_code_cell("show_doc(thing)", outputs=[nbformat.v4.new_output(
            "display_data", data={"text/markdown": "### thing\n\n*Make a thing, rendered.*", "text/plain": "<md>"})]),
        nbformat.v4.new_code_cell("thing()  # SHOWN\nshow_doc(thing)")])
    body, _ = bd._exporter().from_notebook_node(bd.for_reading(nb))
    text = _text(body)
    assert "<em>Make a thing, rendered.</em>" in body and re.search(r'<h3 id="thing">', body)
    assert "SHOWN" in text and text.count("show_doc(thing)") == 1         # only the mixed cell's call
    assert "HIDDEN" not in text and "#|" not in text and "def thing()" in text


def test_report_is_html(site):
    "Defect: the report on the index page was raw Markdown in a preformatted block."
    idx = site["index"]
    assert "<table>" in idx and "<td>28.1</td>" in idx and re.search(r"<h1[^>]*>report of fake</h1>", idx)
    assert "|---|" not in idx and not re.search(r"<pre>[^<]*# report", idx)
    assert 'src="report_files/f.png"' in idx and (site["out"] / "report_files" / "f.png").read_bytes() == b"\x89PNG fake"


def test_executed_copy_shows_only_declared_parameters(site):
    """Defect: every executed notebook carried all ~45 keys of params/demo.yaml in its injected cell; the run's executed
    copy is what the page shows, with its outputs, and a note when the notebook changed since."""
    text = _text((site["out"] / "01_data.html").read_text())
    assert "OUTPUT FROM THE RUN" in text and 'config = "fake"' in text and "n_clips = 7" in text
    assert "steer_alphas" not in text and "1 parameters of the parameter file" in text
    assert "earlier version of nbs/01_data.ipynb" in text


def test_a_failing_library_notebook_fails_the_build_after_writing_pages(tmp_path):
    "A library notebook that fails at test size is a real fault: the page shows the error and the build exits non-zero."
    nbs, run = tmp_path / "nbs", tmp_path / "run"
    nbs.mkdir(); run.mkdir()
    for stem in ["00a_lib", "index"]:
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_markdown_cell(f"# {stem}\n\n> the {stem} page"),
                                             nbformat.v4.new_code_cell("1/0")])
        nbformat.write(nb, nbs / f"{stem}.ipynb")
    with pytest.raises(SystemExit, match="00a_lib.ipynb failed"):
        bd.build(run, tmp_path / "out", nbs_dir=nbs, jobs=1, cache=False,
                 execute_fn=lambda p, m: (nbformat.read(p, as_version=4), "ZeroDivisionError: division by zero"))
    assert "ZeroDivisionError" in (tmp_path / "out" / "00a_lib.html").read_text()
    assert "the 00a_lib page" in (tmp_path / "out" / "index.html").read_text()


def test_cache_reuses_an_execution_until_notebook_or_library_change(tmp_path):
    "Executed notebooks are reused by their stamp (notebook bytes, library source), never by file times; failures are not kept."
    p = tmp_path / "00a_x.ipynb"
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 1")]), p)
    calls = []

    def ex(path, mode, err=""):
        calls.append(mode); nb = nbformat.read(path, as_version=4)
        nb.cells[0].outputs = [nbformat.v4.new_output("stream", text=f"run {len(calls)}")]
        return nb, err
    cache = tmp_path / "cache"
    first, _ = bd.cached_execute(p, "test", cache, ex, library="L1")
    again, _ = bd.cached_execute(p, "test", cache, ex, library="L1")
    assert len(calls) == 1 and again.cells[0].outputs[0].text == first.cells[0].outputs[0].text == "run 1"
    bd.cached_execute(p, "test", cache, ex, library="L2"); assert len(calls) == 2
    nbformat.write(nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell("x = 2")]), p)
    bd.cached_execute(p, "test", cache, ex, library="L2"); assert len(calls) == 3
    bd.cached_execute(p, "api", cache, lambda q, m: ex(q, m, err="boom"), library="L2")
    bd.cached_execute(p, "api", cache, ex, library="L2"); assert calls[-2:] == ["api", "api"]


def test_library_notebook_pages_show_their_figures(tmp_path, monkeypatch):
    # defect (issue 25): under the Makefile's MPLBACKEND=Agg the docs' kernel drew nothing inline, so a page had no figure
    monkeypatch.setenv("MPLBACKEND", "Agg")
    nbs, run = tmp_path / "nbs", tmp_path / "run"
    nbs.mkdir(); run.mkdir()
    nbformat.write(nbformat.v4.new_notebook(cells=[
        nbformat.v4.new_markdown_cell("# 00z plot\n\n> a library notebook that draws"),
        nbformat.v4.new_code_cell("import matplotlib.pyplot as plt\nplt.plot([0, 1], [1, 0]);")],
        metadata={"kernelspec": {"display_name": "python3", "language": "python", "name": "python3"}}), nbs / "00z_plot.ipynb")
    bd.build(run, tmp_path / "out", nbs_dir=nbs, jobs=1, cache=False)
    page = (tmp_path / "out" / "00z_plot.html").read_text()
    assert len(re.findall(r'<img[^>]+src="data:image/png;base64,', page)) == 1
