"""`dvc plots show` works offline and lists no variant by hand: dvc.yaml's plots draw from the
long-form metrics/curves.json (one row per variant and epoch, mnist_repro.report.outputs.curve_rows) through templates
that colour by the rows' `variant`, and the page inlines Vega instead of loading it from a CDN
(.dvc/config plots.html_template = .dvc/plots/offline.html)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import yaml
from support.projects import REPO

DVC = (sys.executable, "-m", "dvc")
# The columns of metrics/curves.json (mnist_repro.report.outputs.curve_rows); "variant" and "epoch" are the keys.
CURVE_COLUMNS = {"test_acc", "test_loss", "train_acc", "train_loss", "ours_mean", "ours_min", "ours_max",
                 "published", "published_path"}


def plots(root) -> list:
    from dvc.utils.serialize import load_yaml

    return [(name, spec) for entry in load_yaml(root / "dvc.yaml")["plots"] for name, spec in entry.items()]


def test_dvc_yaml_names_no_variant():
    """Which runs exist comes from params.yaml alone: dvc.yaml's stages and plots (comments aside)
    name no variant, seed or model, so adding a variant touches params.yaml only."""
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    names = {*params["variants"], *(v["model"] for v in params["variants"].values())}
    code = "\n".join(line.split("#", 1)[0] for line in (REPO / "dvc.yaml").read_text().splitlines())
    assert not sorted(n for n in names if re.search(rf"\b{re.escape(n)}\b", code))
    assert not re.search(r"seed_\d|@\w+-\d", code), "dvc.yaml names a seed"


def test_plots_draw_long_form_curves():
    for name, spec in plots(REPO):
        assert list(spec["y"]) == ["metrics/curves.json"], name
        assert spec["x"] == "epoch" and spec["y"]["metrics/curves.json"] in CURVE_COLUMNS, name
        template = json.loads((REPO / ".dvc" / "plots" / f"{spec['template']}.json").read_text())
        assert template["encoding"]["color"]["field"] == "variant", f"{name}: not coloured by variant"


def long_form_curves(variants) -> list:
    """metrics/curves.json's layout filled from the committed main-run histories (the columns the
    report adds from several runs stay null here)."""
    rows = []
    for name in variants:
        for h in json.loads((REPO / f"metrics/history/{name}/seed_1.json").read_text()):
            rows.append({"variant": name, "epoch": h["epoch"], **{k: h.get(k) for k in CURVE_COLUMNS}})
    return rows


@pytest.fixture(scope="module")
def plots_page(tmp_path_factory):
    """`dvc plots show` in a git + DVC copy of the project's dvc.yaml, params.yaml and .dvc/ config and
    templates, with metrics/curves.json from the committed histories: the page's text."""
    work = tmp_path_factory.mktemp("plots") / "project"
    work.mkdir()
    (work / ".dvc").mkdir()
    for rel in ("dvc.yaml", "params.yaml", ".dvc/config"):
        shutil.copy(REPO / rel, work / rel)
    shutil.copytree(REPO / ".dvc/plots", work / ".dvc/plots")
    subprocess.run(["git", "init", "-q"], cwd=work, check=True)
    (work / "metrics").mkdir()
    variants = list(yaml.safe_load((REPO / "params.yaml").read_text())["variants"])
    (work / "metrics/curves.json").write_text(json.dumps(long_form_curves(variants)))
    proc = subprocess.run([*DVC, "plots", "show", "-o", "page"], cwd=work, capture_output=True, text=True,
                          env={"DVC_NO_ANALYTICS": "1", "PATH": "/usr/bin:/bin", "HOME": str(work)})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return (work / "page" / "index.html").read_text()


def test_the_page_loads_no_remote_script(plots_page):
    tags = re.findall(r"<script\b[^>]*>", plots_page)
    assert tags and not [t for t in tags if "src" in t], f"scripts loaded from elsewhere: {tags}"
    assert not re.findall(r"""(?:src|href)\s*=\s*["']?(?:https?:)?//""", plots_page)
    for bundle in ("vega 5.", "vega-lite 5.", "vega-embed 6."):
        assert f"/* {bundle}" in plots_page, f"{bundle} not inlined"


def test_the_page_has_every_plot_and_variant(plots_page):
    specs = [json.loads(m) for m in re.findall(r"var spec = ([\s\S]*?);\n\s*vegaEmbed", plots_page)]
    assert [s["title"] for s in specs] == [spec.get("title", name) for name, spec in plots(REPO)]
    variants = list(yaml.safe_load((REPO / "params.yaml").read_text())["variants"])
    for spec in specs:
        assert {row["variant"] for row in spec["data"]["values"]} == set(variants), spec["title"]


RENDER_JS = r"""
// Run the page's inlined bundles in node, compile each plot and render it to SVG: no network.
const fs = require('fs'), vm = require('vm');
const html = fs.readFileSync(process.argv[2], 'utf8');
const ctx = {console, setTimeout, clearTimeout, setInterval, clearInterval, Promise, structuredClone, URL,
             TextEncoder, TextDecoder, queueMicrotask};
ctx.window = ctx; ctx.self = ctx; ctx.globalThis = ctx;
vm.createContext(ctx);
for (const m of html.matchAll(/<script>([\s\S]*?)<\/script>/g)) vm.runInContext(m[1], ctx);
const specs = [...html.matchAll(/var spec = ([\s\S]*?);\n\s*vegaEmbed/g)].map(m => JSON.parse(m[1]));
(async () => {
  for (const spec of specs) {
    const view = new ctx.vega.View(ctx.vega.parse(ctx.vegaLite.compile(spec).spec), {renderer: 'none'});
    const svg = await view.toSVG();
    console.log(JSON.stringify({title: spec.title, paths: (svg.match(/<path/g) || []).length, svg: svg.length}));
  }
})().catch(e => { console.error(String(e.stack || e).slice(0, 2000)); process.exit(1); });
"""


@pytest.mark.skipif(shutil.which("node") is None, reason="node is not installed: the page is not rendered")
def test_the_page_renders_with_its_inlined_vega(plots_page, tmp_path):
    page, script = tmp_path / "index.html", tmp_path / "render.js"
    page.write_text(plots_page)
    script.write_text(RENDER_JS)
    proc = subprocess.run(["node", str(script), str(page)], capture_output=True, text=True, timeout=120,
                          env={"PATH": "/usr/bin:/bin"})
    assert proc.returncode == 0, proc.stderr
    rendered = [json.loads(line) for line in proc.stdout.splitlines()]
    assert len(rendered) == len(plots(REPO))
    variants = yaml.safe_load((REPO / "params.yaml").read_text())["variants"]
    assert all(r["paths"] > len(variants) for r in rendered), rendered  # a line per variant, axes, ticks
