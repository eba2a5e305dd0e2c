"""The census as one self-contained HTML page: the ranked table and size against bits per weight."""

from __future__ import annotations

import html

from ..plotting import inline_svg, pyplot
from ..text import human_bytes


def size_against_bits(models: list[dict]) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7.5, 4.2))
    for kept, color, label in ((True, "#1a9641", "experts MXFP4 kept"), (False, "#d7191c", "experts requantized")):
        group = [m for m in models if m["experts_mxfp4"] == kept and m["bits_per_weight"]]
        ax.scatter([m["bits_per_weight"] for m in group], [m["bytes"] / 1e9 for m in group], c=color, label=label,
                   s=28)
        for m in group:
            ax.annotate(m["model"].split(":")[-1], (m["bits_per_weight"], m["bytes"] / 1e9), fontsize=6,
                        xytext=(3, 2), textcoords="offset points")
    ax.set_xlabel("bits per weight")
    ax.set_ylabel("size (GB)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return inline_svg(fig, "census")


def _bits(value: float | None) -> str:
    return f"{value:.2f}" if value else "?"


def render_census_page(doc: dict) -> str:
    e = html.escape
    rows = []
    for i, m in enumerate(doc["models"], 1):
        experts = "MXFP4 kept" if m["experts_mxfp4"] else ", ".join(m["expert_types"]) or "none found"
        same = f"<br><small>same bytes: {e(', '.join(m['same_bytes_as']))}</small>" if m["same_bytes_as"] else ""
        rows.append(f"<tr class='{'kept' if m['experts_mxfp4'] else 'lost'}'><td>{i}</td><td>{e(m['model'])}{same}</td>"
                    f"<td>{e(m['publisher'])}</td><td>{m['downloads']:,}</td><td>{human_bytes(m['bytes'])}</td>"
                    f"<td>{e(experts)}</td><td>{e(', '.join(m['other_types']))}</td>"
                    f"<td>{_bits(m['bits_per_weight'])}</td></tr>")
    failures = [f"<li>repo {e(r['repo'])}: {e(r['error'])}</li>" for r in doc["failed_repos"]]
    failures += [f"<li>{e(r['model'])}: {e(r['error'])}</li>" for r in doc["unreadable_models"]]
    plot = size_against_bits(doc["models"]) if doc["models"] else "<p>No GPT-OSS GGUF model found.</p>"
    return f"""<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Quantizations of {e(doc['base_model'])}</title>
<style>body{{font-family:system-ui,sans-serif;max-width:72rem;margin:2rem auto;padding:0 1rem}}
table{{border-collapse:collapse;font-size:.85rem}}
td,th{{border-bottom:1px solid #ddd;padding:.25rem .5rem;text-align:left}}
tr.kept td:nth-child(6){{color:#1a9641;font-weight:600}}tr.lost td:nth-child(6){{color:#d7191c}}</style></head>
<body><h1>Quantizations of {e(doc['base_model'])} on the Hub</h1>
<p>{len(doc['models'])} GPT-OSS GGUF models in {doc['repos']} repos, surveyed from their headers
({human_bytes(doc['header_bytes_read'])} read, {doc['models_from_cache']} from the cache).
Ranked: {e(doc['ranking'])}. Headers say whether the FP4 bits <em>can</em> be intact;
<code>oss-convert verify SOURCE REPO:FILE.gguf</code> proves it.</p>
{plot}
<table><tr><th>#</th><th>model</th><th>publisher</th><th>downloads</th><th>size</th><th>experts</th>
<th>other tensors</th><th>bits/weight</th></tr>
{''.join(rows)}</table>
{'<h2>Not surveyed</h2><ul>' + ''.join(failures) + '</ul>' if failures else ''}
</body></html>
"""
