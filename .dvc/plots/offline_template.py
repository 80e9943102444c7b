"""Build offline.html, the page template `dvc plots show` uses (.dvc/config plots.html_template):
DVC's own page with vega, vega-lite and vega-embed inlined instead of loaded from a CDN, so the
plots render with no network. The template has no `{scripts}` placeholder, so DVC adds no CDN tags.

Remake it (from the repository root) after changing a version below:
    (cd /tmp && npm pack vega@5.33.1 vega-lite@5.23.0 vega-embed@6.29.0)
    python .dvc/plots/offline_template.py /tmp
"""

import sys
import tarfile
from pathlib import Path

BUNDLES = {"vega": "5.33.1", "vega-lite": "5.23.0", "vega-embed": "6.29.0"}  # DVC's template: vega-lite v5

PAGE = """<!DOCTYPE html>
<html>
<head>
    {{refresh_tag}}
    <title>DVC Plot</title>
    <!-- {names}: BSD-3-Clause, University of Washington Interactive Data Lab (VEGA-LICENSES.txt);
         inlined by .dvc/plots/offline_template.py -->
{scripts}
    <style>
        table {{
            border-spacing: 15px;
        }}
    </style>
</head>
<body>
    {{plot_divs}}
</body>
</html>
"""


def minified(tarball: Path, name: str) -> str:
    with tarfile.open(tarball) as tar:
        text = tar.extractfile(f"package/build/{name}.min.js").read().decode()
    for placeholder in ("{plot_divs}", "{scripts}", "{refresh_tag}", "</script"):
        assert placeholder not in text, f"{tarball}: contains {placeholder}"
    return text


def main(npm_dir: str) -> None:
    scripts = "\n".join(f"    <script>/* {name} {version} */\n{minified(Path(npm_dir) / f'{name}-{version}.tgz', name)}"
                        f"\n    </script>" for name, version in BUNDLES.items())
    names = ", ".join(f"{n} {v}" for n, v in BUNDLES.items())
    out = Path(__file__).with_name("offline.html")
    out.write_text(PAGE.format(names=names, scripts=scripts))
    print(f"wrote {out} ({out.stat().st_size // 1024} KiB)")


if __name__ == "__main__":
    main(sys.argv[1])
