"""Small HTML building blocks shared by the subject and group reports (self-contained, no JS).

Everything is escaped here; callers pass plain strings and numbers. Pages embed their CSS and
reference images by relative paths, so an output folder can be moved or archived as a whole.
"""

from __future__ import annotations

import html
import math
from datetime import datetime, timezone

from l2s_pipelines import __version__

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,Helvetica,Arial,sans-serif;margin:0;
 color:#1d2330;background:#f6f7f9;line-height:1.45}
header{background:#1d2a44;color:#fff;padding:1rem 2rem}header h1{margin:0;font-size:1.5rem}
header p{margin:.2rem 0 0;opacity:.8}
main{max-width:1200px;margin:0 auto;padding:1rem 2rem 3rem}
section{background:#fff;border:1px solid #dde1e7;border-radius:6px;padding:1rem 1.5rem;margin:1rem 0}
h2{font-size:1.25rem;margin:.2rem 0 .8rem}h3{font-size:1.05rem;margin:1rem 0 .5rem}
nav a{margin-right:1rem}
table{border-collapse:collapse;font-size:.88rem;margin:.5rem 0}
th,td{border-bottom:1px solid #e3e6eb;padding:.25rem .6rem;text-align:right}
th{background:#eef1f5;position:sticky;top:0}
td.txt,th.txt{text-align:left}
tr.flagged td{background:#fff1e6}
.swatch{display:inline-block;width:.9em;height:.9em;border:1px solid #777;margin-right:.4em;
 vertical-align:middle}
.mosaic{max-width:100%;height:auto;display:block;margin:.3rem 0 .8rem;background:#000}
.badge{display:inline-block;white-space:nowrap;padding:.1rem .5rem;border-radius:3px;font-size:.8rem;font-weight:600}
.ok{background:#dff3e3;color:#1b5e20}.warn{background:#ffe0b2;color:#8a4b00}
.bad{background:#ffd6d6;color:#8e0000}
.na{background:#eceff1;color:#546e7a}
.legend{border:1px solid #dde1e7;border-radius:4px;padding:.2rem .8rem;margin:.5rem 0;background:#fafbfc}
.legend ul{list-style:none;padding:0;margin:.3rem 0;columns:15rem auto;font-size:.85rem}
.legend li{break-inside:avoid;margin:.1rem 0}.legend p{font-size:.85rem;margin:.3rem 0}
.callout{border-left:4px solid #e08a00;background:#fff6e8;padding:.5rem 1rem;margin:.5rem 0}
.error{border-left:4px solid #c62828;background:#fdecec;padding:.5rem 1rem;margin:.5rem 0;
 font-family:ui-monospace,monospace;white-space:pre-wrap;font-size:.85rem}
.scroll{max-height:32rem;overflow:auto}
.grid{display:grid;grid-template-columns:repeat(auto-fill,minmax(260px,1fr));gap:.8rem}
.grid img{width:100%;height:auto;border:1px solid #dde1e7}
footer{color:#667;font-size:.8rem;text-align:center;padding:1rem}
"""


def esc(value) -> str:
    """HTML-escape ``value`` (``None`` becomes an empty string)."""
    return "" if value is None else html.escape(str(value), quote=True)


def fmt(value, digits: int = 1) -> str:
    """Number formatting for tables: ``n/a`` for missing or non-finite values."""
    if value is None:
        return "n/a"
    try:
        number = float(value)
    except (TypeError, ValueError):
        return esc(value)
    if not math.isfinite(number):
        return "n/a"
    return f"{number:,.{digits}f}"


def table(headers: list[str], rows: list[list], *, text_columns: tuple[int, ...] = (0,),
          row_classes: list[str] | None = None, raw_columns: tuple[int, ...] = ()) -> str:
    """An HTML table. Cells are escaped except in ``raw_columns`` (already-built HTML)."""
    def cell(tag: str, j: int, value) -> str:
        cls = ' class="txt"' if j in text_columns else ""
        return f"<{tag}{cls}>{value if j in raw_columns else esc(value)}</{tag}>"

    head = "".join(cell("th", j, h) for j, h in enumerate(headers))
    body = []
    for i, row in enumerate(rows):
        cls = f' class="{row_classes[i]}"' if row_classes and row_classes[i] else ""
        body.append(f"<tr{cls}>" + "".join(cell("td", j, v) for j, v in enumerate(row)) + "</tr>")
    return f'<table><thead><tr>{head}</tr></thead><tbody>{"".join(body)}</tbody></table>'


def swatch(color: str) -> str:
    """A small coloured square for a label colour ``#rrggbb``."""
    return f'<span class="swatch" style="background:{esc(color)}"></span>'


def badge(text: str, kind: str) -> str:
    """A coloured badge; ``kind`` is ``ok``, ``warn``, ``bad`` or ``na`` (neutral grey)."""
    return f'<span class="badge {esc(kind)}">{esc(text)}</span>'


def page(title: str, subtitle: str, body: str) -> str:
    """A full, self-contained HTML document."""
    stamp = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header><main>{body}</main>"
        f"<footer>l2s-pipelines {esc(__version__)} &middot; generated {stamp}</footer>"
        "</body></html>\n"
    )


CITATION = """
<p>Segmentations were computed with <em>l2s-pipelines</em> {version}, a BIDS App whose network
({model}, weights sha256 <code>{sha}</code>) was trained with Learn2Synth: synthetic images
generated from label maps as in SynthSeg, with augmentation parameters learned so that a network
trained on synthetic images segments a small set of real images well. The per-image processing
was orchestrated with Pydra. Volumes are reported as hard (voxel count &times; voxel volume) and
soft (sum of posterior probabilities) estimates in mm<sup>3</sup>; {tiv}</p>
<h3>References</h3>
<ul>
<li>X. Hu, X. Zeng, O. Puonti, J. E. Iglesias, B. Fischl, Y. Balbastre. Learn2Synth: Learning
Optimal Data Synthesis Using Hypergradients for Brain Image Segmentation. ICCV 2025.
arXiv:2411.16719.</li>
<li>B. Billot, D. N. Greve, O. Puonti, A. Thielscher, K. Van Leemput, B. Fischl, A. V. Dalca,
J. E. Iglesias. SynthSeg: Segmentation of brain MRI scans of any contrast and resolution without
retraining. Medical Image Analysis 86:102789, 2023.</li>
<li>Pydra: a flexible and lightweight dataflow engine for reproducible and scalable
neuroimaging pipelines (nipype/pydra).</li>
</ul>
"""


def citation(model_name: str, model_sha: str, tiv_method: str | None) -> str:
    """Methods and citation boilerplate naming the model and its sha256."""
    tiv = (f"total intracranial volume (TIV) was estimated as: {esc(tiv_method)}."
           if tiv_method else "")
    return CITATION.format(version=esc(__version__), model=esc(model_name),
                           sha=esc(model_sha), tiv=tiv)
