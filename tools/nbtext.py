"""Round-trip notebooks through plain text (jupytext percent format) so they can be edited as files.

    python tools/nbtext.py build nbs/_src/04_train_sae.py nbs/04_train_sae.ipynb
    python tools/nbtext.py dump  nbs/04_train_sae.ipynb /tmp/04.py

`build` writes a clean notebook: python3 kernelspec, no jupytext metadata, no outputs, cell tags kept
(`# %% tags=["parameters"]` becomes papermill's parameters cell). The text file is a scratch copy: the
notebook stays the source of truth, so do not commit the text file.
"""
import sys
import jupytext
import nbformat

KERNEL = {"display_name": "python3", "language": "python", "name": "python3"}


def _keep_ids(nb, dst):
    "Reuse the cell ids of the notebook being replaced (same source first, then same place) so diffs stay small."
    try: old = nbformat.read(dst, as_version=4).cells
    except (OSError, ValueError): return
    by_src = {}
    for c in old: by_src.setdefault(c.source, c.id)
    used = set()
    for c in nb.cells:
        if by_src.get(c.source) not in (None, *used): c.id = by_src[c.source]; used.add(c.id)
    for i, c in enumerate(nb.cells):
        if c.id in used or i >= len(old): continue
        if old[i].cell_type == c.cell_type and old[i].id not in used: c.id = old[i].id; used.add(c.id)


def build(src, dst):
    nb = jupytext.read(src, fmt="py:percent")
    nbformat.validator.normalize(nb)
    _keep_ids(nb, dst)
    nb.metadata = {"kernelspec": KERNEL}
    for c in nb.cells:
        tags = c.metadata.get("tags")
        c.metadata = {"tags": tags} if tags else {}
        if c.cell_type == "code":
            c.outputs, c.execution_count = [], None
    nbformat.validator.normalize(nb)
    nbformat.write(nb, dst)


def dump(src, dst):
    nb = nbformat.read(src, as_version=4)
    jupytext.write(nb, dst, fmt="py:percent")


if __name__ == "__main__":
    cmd, src, dst = sys.argv[1:4]
    {"build": build, "dump": dump}[cmd](src, dst)
