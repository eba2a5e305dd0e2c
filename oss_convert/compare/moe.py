"""`oss-convert compare`: the same hidden states through the MoE blocks of two artifacts, layer by
layer, their outputs compared (identical weights give identical outputs)."""

from __future__ import annotations

import sys

import torch
from tqdm import tqdm

from ..checkpoint import Checkpoint
from ..errors import OssConvertError
from ..runtime.execution.device import pick_device
from ..runtime.execution.moe import choose_backend, run_moe
from ..runtime.model.moe import MoEBlock
from ..runtime.model.norm import rms_norm
from ..runtime.weights.source import WeightSource
from ..text import table


def parse_layers(spec: str, n_layers: int) -> list[int]:
    if spec == "all":
        return list(range(n_layers))
    try:
        layers = [int(p) for p in spec.split(",") if p.strip()]
    except ValueError:
        raise OssConvertError(f"--layers {spec!r}: expected 'all' or numbers like 0,3,5") from None
    bad = [n for n in layers if not 0 <= n < n_layers]
    if bad or not layers:
        raise OssConvertError(f"--layers {spec!r}: the model has layers 0..{n_layers - 1}")
    return layers


def hidden_states(layer_norm: torch.Tensor, tokens: int, seed: int, layer: int, device) -> torch.Tensor:
    """Residual-stream-like inputs (unit variance), normalized by the layer's own post-attention norm."""
    gen = torch.Generator().manual_seed(seed * 1_000_003 + layer)
    x = torch.randn(tokens, layer_norm.shape[0], generator=gen)
    return rms_norm(x, layer_norm.cpu()).to(device)


def layer_metrics(a: torch.Tensor, b: torch.Tensor) -> dict:
    diff = (a - b).double()
    a64, b64 = a.double().flatten(), b.double().flatten()
    denom = a64.norm() * b64.norm()
    return {"max_abs_diff": float(diff.abs().max()),
            "rel_error": float(diff.norm() / a64.norm()) if a64.norm() > 0 else 0.0,
            "cosine": float(a64 @ b64 / denom) if denom > 0 else 1.0}


def compare_moe(a: Checkpoint, b: Checkpoint, layers: str = "all", tokens: int = 64, device: str = "auto",
                seed: int = 0) -> dict:
    ca, cb = a.require_config(), b.require_config()
    if (ca.num_layers, ca.hidden_size, ca.num_experts) != (cb.num_layers, cb.hidden_size, cb.num_experts):
        raise OssConvertError(f"{a.where} and {b.where} are different models (layers, hidden size or experts differ)")
    dev = pick_device(device)
    source_a, source_b = WeightSource(a, dev), WeightSource(b, dev)
    results = []
    chosen = parse_layers(layers, ca.num_layers)
    for n in tqdm(chosen, desc="MoE layers", unit="layer", disable=not sys.stderr.isatty()):
        la, lb = MoEBlock.from_weights(source_a, n), MoEBlock.from_weights(source_b, n)
        x = hidden_states(la.norm, tokens, seed, n, dev)
        with torch.no_grad():
            ya, yb = run_moe(la, x), run_moe(lb, x)
            ea, _ = la.route(x)
            eb, _ = lb.route(x)
        same = (ea.sort(dim=-1).values == eb.sort(dim=-1).values).all(dim=-1).float().mean().item()
        results.append({"layer": n, **layer_metrics(ya.cpu(), yb.cpu()), "same_experts": same == 1.0,
                        "same_experts_fraction": same,
                        "backend_a": choose_backend(la, dev), "backend_b": choose_backend(lb, dev),
                        "format_a": la.gate_up.format, "format_b": lb.gate_up.format})
    identical = all(r["max_abs_diff"] == 0 for r in results)
    worst = max(results, key=lambda r: r["rel_error"])
    verdict = (f"identical MoE outputs in all {len(results)} layer(s)" if identical else
               f"MoE outputs differ: worst layer {worst['layer']}, relative error {worst['rel_error']:.3g}, "
               f"cosine {worst['cosine']:.6f}; router picks the same experts in "
               f"{sum(r['same_experts'] for r in results)}/{len(results)} layers")
    return {"a": a.where, "b": b.where, "device": str(dev), "tokens": tokens, "seed": seed,
            "layers": results, "summary": {"verdict": verdict, "identical": identical}}


def render_comparison(doc: dict) -> str:

    rows = [[str(r["layer"]), f"{r['format_a']}/{r['format_b']}", f"{r['max_abs_diff']:.3g}",
             f"{r['rel_error']:.3g}", f"{r['cosine']:.6f}", f"{100 * r['same_experts_fraction']:.1f}%"]
            for r in doc["layers"]]
    head = [doc["summary"]["verdict"], f"A {doc['a']}, B {doc['b']}; {doc['tokens']} tokens on {doc['device']}, "
            f"seed {doc['seed']}", ""]
    return "\n".join(head + table(rows, ["layer", "experts A/B", "max abs diff", "rel error", "cosine",
                                          "same experts"]))
