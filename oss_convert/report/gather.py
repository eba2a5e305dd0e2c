"""Everything a port report shows, as one document: verify's, the MoE comparison's and (with a
text) the whole-model comparison's own documents, and what the two artifacts are."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from .. import __version__
from ..checkpoint import Checkpoint
from ..errors import OssConvertError


def describe(ckpt: Checkpoint) -> dict:
    """Where it is, its bytes and its mix of types (bytes per format, largest first)."""
    by_format: Counter[str] = Counter()
    for t in ckpt.tensors:
        by_format[t.format] += t.nbytes
    local = [Path(f) for f in ckpt.files if isinstance(f, Path)]
    return {"where": ckpt.where, "kind": ckpt.kind, "layout": ckpt.layout_description,
            "tensors": len(ckpt.tensors), "tensor_bytes": sum(by_format.values()),
            "file_bytes": sum(f.stat().st_size for f in local) if len(local) == len(ckpt.files) else None,
            "formats": dict(by_format.most_common())}


def build_report(src: Checkpoint, port: Checkpoint, *, prompt: str | None = None, tokens: list[int] | None = None,
                 ctx: int = 512, layers: str = "all", moe_tokens: int = 64, seed: int = 0,
                 device: str = "auto") -> dict:
    """Every input is checked (both artifacts, the layers, the text and its token ids) before
    the first tensor is compared, so a bad one costs seconds, not a verify of the whole model."""
    from ..checkpoint.text_tokenizer import check_token_ids, load_tokenizer
    from ..compare import compare_full, compare_moe, parse_layers
    from ..runtime.execution.device import pick_device
    from ..verify import check_inputs, exit_status, verify

    check_inputs(src, port)
    for ckpt in (src, port):
        ckpt.require_config()
    parse_layers(layers, src.require_config().num_layers)
    pick_device(device)
    if prompt is not None:
        tokens = load_tokenizer(src, "; or pass token ids with --tokens-file").encode(prompt).ids
        if not tokens:
            raise OssConvertError("nothing to evaluate: the text gives no tokens")
    if tokens is not None:
        for ckpt in (src, port):
            check_token_ids(ckpt, tokens)

    verified = verify(src, port)
    doc = {"created_by": f"oss-convert {__version__}",
           "artifacts": {"source": describe(src), "port": describe(port)},
           "verify": verified, "exit_status": exit_status(verified, require_fp4=False),
           "moe": compare_moe(src, port, layers=layers, tokens=moe_tokens, device=device, seed=seed),
           "full": None}
    if tokens is not None:
        doc["full"] = compare_full(src, port, tokens=tokens, ctx=ctx, device=device)
    return doc
