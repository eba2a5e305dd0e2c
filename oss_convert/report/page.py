"""The report document as one self-contained HTML page: inline CSS, inline SVG plots, no script,
no link to anything outside it.

Every figure in a table also carries its exact value (`data-field`, `data-value`, Python's repr
of the float), so what the page says can be checked against the JSON it came from."""

from __future__ import annotations

import html
import math
from collections import defaultdict

from ..text import human_bytes
from . import figures

STYLE = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1150px; padding: 0 1em; color: #222; }
h1 { font-size: 1.5em; margin-bottom: 0.2em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.verdict { font-size: 1.1em; padding: 0.8em 1em; border-radius: 4px; }
.ok { background: #e6f4ea; border-left: 6px solid #1b7837; }
.finding { background: #fdecea; border-left: 6px solid #d7191c; }
.requantized { background: #fff4e0; border-left: 6px solid #e08214; }
table { border-collapse: collapse; font-size: 0.85em; margin: 0.5em 0; }
th, td { border: 1px solid #ddd; padding: 2px 8px; text-align: left; vertical-align: top; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
tr.bad td { background: #fdecea; }
.legend span { display: inline-block; width: 1em; height: 1em; vertical-align: middle; margin: 0 0.3em 0 1em; }
svg { max-width: 100%; height: auto; } .note { color: #555; font-size: 0.9em; }
"""


def _e(value) -> str:
    return html.escape(str(value), quote=True)


def _num(field: str, value, shown: str) -> str:
    return f'<td class="num" data-field="{_e(field)}" data-value="{_e(repr(value))}">{_e(shown)}</td>'


def _fmt(value: float, spec: str = ".4g") -> str:
    if value is None:
        return "-"
    return "∞" if isinstance(value, float) and math.isinf(value) else format(value, spec)


def _table(head: list[str], rows: list[str], cls: str) -> str:
    return (f'<table class="{cls}"><thead><tr>' + "".join(f"<th>{_e(h)}</th>" for h in head)
            + "</tr></thead><tbody>" + "".join(rows) + "</tbody></table>")


def _section(ident: str, title: str, body: str) -> str:
    return f'<section id="{ident}"><h2>{_e(title)}</h2>{body}</section>'


def _artifacts(doc: dict) -> str:
    rows = []
    for role, a in doc["artifacts"].items():
        mix = ", ".join(f"{fmt} {human_bytes(n)}" for fmt, n in a["formats"].items())
        size = a["file_bytes"] if a["file_bytes"] is not None else a["tensor_bytes"]
        rows.append(f'<tr data-artifact="{_e(role)}"><td>{_e(role)}</td><td>{_e(a["where"])}</td>'
                    f'<td>{_e(a["kind"])}, {_e(a["layout"])} layout</td>'
                    + _num("bytes", size, human_bytes(size)) + f'<td>{_e(a["tensors"])}</td><td>{_e(mix)}</td></tr>')
    return _table(["", "artifact", "container", "size", "tensors", "types (bytes)"], rows, "artifacts")


def _tensor_rows(tensors: list[dict]) -> str:
    rows = []
    for t in tensors:
        if t["status"] == "bit-identical":
            continue
        worst = min(t["per_expert"], key=lambda e: e["snr_db"]) if t.get("per_expert") else None
        cells = [f"<td>{_e(t['source'] or '-')}</td>", f"<td>{_e(t['port'] or '-')}</td>",
                 f"<td>{_e(t['source_format'] or '-')} → {_e(t['port_format'] or '-')}</td>",
                 f"<td>{_e(t['status'])}</td>"]
        if "snr_db" in t:
            cells += [_num("snr_db", t["snr_db"], _fmt(t["snr_db"], ".1f")),
                      _num("relative_error", t["relative_error"], _fmt(t["relative_error"], ".3g")),
                      _num("max_abs_error", t["max_abs_error"], _fmt(t["max_abs_error"], ".3g"))]
        else:
            cells += ["<td></td>"] * 3
        cells.append(f"<td>expert {worst['expert']}: {_fmt(worst['snr_db'], '.1f')} dB</td>" if worst else "<td></td>")
        bad = ' class="bad"' if t["status"] not in ("bit-identical", "reference-requantized") else ""
        rows.append(f'<tr{bad} data-tensor="{_e(t["port"] or t["source"])}">' + "".join(cells) + "</tr>")
    return _table(["source", "port", "format", "status", "SNR (dB)", "relative error", "max abs error",
                   "worst expert"], rows, "tensors")


def _legend() -> str:
    return (f'<p class="legend note"><span style="background:{figures.IDENTICAL_COLOR}"></span>bit-identical'
            f'<span style="background:{figures.ABSENT_COLOR}"></span>missing, extra or wrong shape (×)'
            f'<span style="border:2px solid {figures.LOSSY_EDGE}"></span>lossy: not what llama-quantize makes'
            " · other cells: SNR in dB (the number in the cell)</p>")


def _experts(verify: dict, n_layers: int) -> str:
    by_kind: dict[str, dict[int, list[dict]]] = defaultdict(dict)
    n_experts = 0
    for t in verify["tensors"]:
        if t.get("per_expert") and t["port"]:
            column, kind = figures.split_name(t["port"])
            if column != figures.MODEL_COLUMN:
                by_kind[kind][int(column)] = t["per_expert"]
                n_experts = max(n_experts, len(t["per_expert"]))
    if not by_kind:
        return '<p class="note">Every expert tensor is bit-identical: no expert lost anything.</p>'
    return "".join(figures.expert_heatmap(kind, layers, n_layers, n_experts) for kind, layers in by_kind.items())


def _moe(moe: dict) -> str:
    rows = [f'<tr data-layer="{r["layer"]}"><td>{r["layer"]}</td><td>{_e(r["format_a"])} / {_e(r["format_b"])}</td>'
            + _num("rel_error", r["rel_error"], _fmt(r["rel_error"], ".3g"))
            + _num("cosine", r["cosine"], _fmt(r["cosine"], ".6f"))
            + _num("max_abs_diff", r["max_abs_diff"], _fmt(r["max_abs_diff"], ".3g"))
            + _num("same_experts_fraction", r["same_experts_fraction"], f"{100 * r['same_experts_fraction']:.1f}%")
            + "</tr>" for r in moe["layers"]]
    return (f'<p data-field="moe-verdict">{_e(moe["summary"]["verdict"])}</p>'
            f'<p class="note">{moe["tokens"]} random hidden states per layer (seed {moe["seed"]}), normalized by '
            f'the layer\'s own norm, through both MoE blocks on {_e(moe["device"])}.</p>'
            + figures.moe_plot(moe["layers"])
            + _table(["layer", "experts", "relative error", "cosine", "max abs diff", "same experts"], rows, "moe"))


SUMMARY_FIELDS = [("positions", "positions", "d"), ("kl_mean", "KL mean", ".4g"), ("kl_p99", "KL p99", ".4g"),
                  ("kl_max", "KL max", ".4g"), ("top1_agreement", "top-1 agreement", ".4f"),
                  ("max_logit_diff", "max |logit difference|", ".4g"), ("perplexity_a", "perplexity, source", ".4f"),
                  ("perplexity_b", "perplexity, port", ".4f")]


def _text(full: dict | None) -> str:
    if full is None:
        return '<p class="note">No text was given (--text-file or --prompt): the whole model was not run.</p>'
    s = full["summary"]
    rows = [f"<tr><td>{_e(label)}</td>" + _num(key, s[key], _fmt(s[key], spec)) + "</tr>"
            for key, label, spec in SUMMARY_FIELDS]
    return (f'<p data-field="full-verdict">{_e(s["verdict"])}</p><p data-field="full-reading">{_e(s["reading"])}</p>'
            f'<p class="note">{s["positions"]} tokens in windows of {full["ctx"]}, on {_e(full["device"])}.</p>'
            + _table(["", ""], rows, "full")
            + figures.kl_per_position(full["per_position"], full["ctx"])
            + figures.kl_distribution(full["per_position"]))


def _metadata(checks: list[dict]) -> str:
    rows = [f'<tr{"" if m["ok"] else " class=bad"} data-key="{_e(m["key"])}"><td>{_e(m["key"])}</td>'
            f'<td>{_e(m["expected"])}</td><td>{_e(m["found"])}</td><td>{"agrees" if m["ok"] else "differs"}</td></tr>'
            for m in checks]
    agree = sum(m["ok"] for m in checks)
    return f"<p>{agree}/{len(checks)} checks agree.</p>" + _table(["key", "expected", "found", ""], rows, "metadata")


def verdict_class(summary: dict, status: int) -> str:
    """The verdict box's colour follows the user's question: FP4 kept (green), requantized as
    llama-quantize would (amber), anything lossy or missing (red)."""
    if status != 0:
        return "finding"
    return "ok" if summary["fp4_preserved"] else "requantized"


def render_page(doc: dict) -> str:
    v = doc["verify"]
    n_layers = 1 + max((int(c) for c in (figures.split_name(t["port"] or t["source"])[0] for t in v["tensors"])
                        if c != figures.MODEL_COLUMN), default=-1)
    counts = ", ".join(f"{n} {k}" for k, n in v["summary"]["counts"].items() if n)
    status = doc["exit_status"]
    meaning = "every tensor bit-identical or a reference requantization, metadata agrees" if status == 0 \
        else "a finding"
    changed = sum(t["status"] != "bit-identical" for t in v["tensors"])
    body = [
        f"<h1>Port report: {_e(doc['artifacts']['port']['where'])}</h1>",
        f'<p class="note">against {_e(doc["artifacts"]["source"]["where"])} · {_e(doc["created_by"])}</p>',
        f'<section id="verdict"><p class="verdict {verdict_class(v["summary"], status)}" data-field="verdict">'
        f'{_e(v["summary"]["verdict"])}</p><p data-field="exit_status" data-value="{status}">'
        f"<code>oss-convert verify</code> exits {status}"
        f" ({meaning})"
        "</p></section>",
        _section("artifacts", "The two artifacts", _artifacts(doc)),
        _section("tensors", "Error per layer and tensor",
                 f"<p>Tensors: {_e(counts)}.</p>" + _legend() + figures.tensor_heatmap(v["tensors"], n_layers)
                 + f"<details{' open' if changed <= 60 else ''}><summary>{changed} tensor(s) not bit-identical"
                 "</summary>" + _tensor_rows(v["tensors"])
                 + "</details>"),
        _section("experts", "Error per expert", _experts(v, n_layers)),
        _section("moe", "MoE blocks on the same inputs", _moe(doc["moe"])),
        _section("text", "The whole model on a text", _text(doc["full"])),
        _section("metadata", "Metadata", _metadata(v["metadata"])),
    ]
    title = f"oss-convert port report: {doc['artifacts']['port']['where']}"
    return (f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8"><title>{_e(title)}</title>'
            f"<style>{STYLE}</style></head><body>{''.join(body)}</body></html>\n")
