"""A memory estimate: llama.cpp's buffers and our runtime's tensors at one or more contexts, and,
given a GPU's memory, whether each fits and the largest context that does."""

from __future__ import annotations

from dataclasses import asdict

from ..checkpoint import Checkpoint, Role
from ..errors import OssConvertError
from ..files.gguf import DEFAULT_ALIGNMENT, tensor_nbytes
from ..plan.lossless import plan_lossless
from .context import DEFAULT_CONTEXT, ContextOptions, ModelShape
from .llama import CELL_PAD, llama_cpp_memory
from .runtime import runtime_memory, runtime_weight_bytes

NOTES = [
    "llama.cpp: buffers as libllama allocates them with flash attention on (its automatic choice), "
    "weights as stored in the GGUF; KV, weights and output exact, compute modelled (measured within 10%)",
    "llama.cpp on a GPU (all layers offloaded): the token embedding and the output buffer stay in host memory",
    "our runtime (generate on CUDA): weights, a float32 KV cache of every layer, and the peak of a "
    "512-token prompt micro-batch attending over the whole context; compare --full holds one layer at a time",
]


def gguf_weight_bytes(ckpt: Checkpoint) -> tuple[int, int]:
    """(all tensor data, the token embedding's part) as libllama maps it: each tensor padded to
    the GGUF's alignment; for a safetensors checkpoint, of the lossless GGUF it converts to."""
    if ckpt.kind == "gguf":
        alignment = int(ckpt.metadata.get("general.alignment", DEFAULT_ALIGNMENT))
        sizes = [(t.role, t.nbytes) for t in ckpt.tensors]
    else:
        if not ckpt.has_mxfp4_experts():
            raise OssConvertError(f"{ckpt.where}: the experts are not MXFP4, so there is no lossless GGUF "
                                  "to size llama.cpp's buffers from; inspect a GGUF of it instead")
        alignment = DEFAULT_ALIGNMENT
        sizes = [(Role.EMBEDDING if p.name == "token_embd.weight" else Role.OTHER, tensor_nbytes(p.type, p.shape))
                 for p in plan_lossless(ckpt)]
    padded = [(role, n + (-n % alignment)) for role, n in sizes]
    return sum(n for _, n in padded), sum(n for role, n in padded if role == Role.EMBEDDING)


def model_shape(ckpt: Checkpoint) -> ModelShape:
    cfg = ckpt.require_config()
    embedding = [t for t in ckpt.tensors if t.role == Role.EMBEDDING]
    vocab = embedding[0].shape[0] if embedding else cfg.vocab_size
    if not vocab:
        raise OssConvertError(f"{ckpt.where}: no embedding tensor and no vocab_size: cannot size the output")
    return ModelShape(cfg.num_layers, cfg.num_experts, cfg.experts_per_token, cfg.hidden_size, cfg.intermediate_size,
                      cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, vocab, cfg.sliding_window, cfg.context_length)


def default_contexts(shape: ModelShape) -> list[int]:
    return sorted({min(DEFAULT_CONTEXT, shape.max_context), shape.max_context})


def memory_estimate(ckpt: Checkpoint, opts: ContextOptions, *, contexts: list[int] | None = None,
                gpu_memory: int | None = None) -> dict:
    """The estimate at each of `contexts` (by default opts.ctx alone) with the other settings of `opts`."""
    shape = model_shape(ckpt)
    weights, embedding = gguf_weight_bytes(ckpt)
    ours = runtime_weight_bytes(ckpt)
    rows = []
    for ctx in contexts or [opts.ctx]:
        o = opts.with_ctx(ctx)
        llama = llama_cpp_memory(shape, weights, o)
        llama["gpu_bytes"] = llama_gpu_bytes(llama, embedding)
        runtime = runtime_memory(shape, ours, ctx)
        row = {"ctx": ctx, "llama_cpp": llama, "runtime": runtime}
        if gpu_memory is not None:
            row["fits_llama_cpp"] = llama["gpu_bytes"] <= gpu_memory
            row["fits_runtime"] = runtime["total_bytes"] <= gpu_memory
        rows.append(row)
    doc = {"options": {k: v for k, v in asdict(opts).items() if k != "ctx"}, "max_context": shape.max_context,
           "contexts": rows, "notes": NOTES}
    if gpu_memory is not None:
        doc["gpu_memory_bytes"] = gpu_memory
        doc["largest_context"] = {
            "llama_cpp": largest_context(
                lambda c: llama_gpu_bytes(llama_cpp_memory(shape, weights, opts.with_ctx(c)), embedding),
                gpu_memory, shape.max_context),
            "runtime": largest_context(lambda c: runtime_memory(shape, ours, c)["total_bytes"],
                                       gpu_memory, shape.max_context),
        }
    return doc


def llama_gpu_bytes(llama: dict, embedding: int) -> int:
    """What a GPU holds with every layer offloaded: all but the token embedding and the output buffer."""
    return llama["total_bytes"] - embedding - llama["output_bytes"]


def largest_context(need, budget: int, max_context: int) -> int | None:
    """The largest context, a multiple of 256 up to the model's maximum, whose need fits the
    budget (need grows with the context); None when not even 256 tokens fit."""
    lo, hi = 0, max(1, max_context // CELL_PAD)
    if need(CELL_PAD) > budget:
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if need(mid * CELL_PAD) <= budget:
            lo = mid
        else:
            hi = mid - 1
    return lo * CELL_PAD
