"""The whole GPT-OSS forward pass, from either artifact, with a KV cache.

    x = embed[tokens]
    for each block:  x += Attn(RMSNorm(x));  x += MoE(RMSNorm(x))
    logits = lm_head(RMSNorm(x))

Attention: 64 query heads over 8 KV heads (GQA), head_dim 64, biases on q/k/v/o, scale
1/8, one learned sink logit per head in the softmax denominator, NeoX RoPE with YaRN
scaling; even layers see only the last `sliding_window` positions.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from ..checkpoint import Checkpoint
from ..checkpoint.config import GptOssConfig
from ..errors import OssConvertError
from ..files.stream import release_freed_memory
from . import native
from .moe import moe_forward, rms_norm
from .weights import MoELayer, StoredMatrix, as_float32, load_layer, stored_matrix

# ------------------------------------------------------------------------------ RoPE

def yarn_frequencies(cfg: GptOssConfig) -> tuple[torch.Tensor, float]:
    """(inverse frequencies [head_dim/2], attention factor) of YaRN without truncation."""
    dim, base, factor = cfg.head_dim, cfg.rope_theta, cfg.rope_scaling_factor
    pos_freqs = base ** (torch.arange(0, dim, 2, dtype=torch.float64) / dim)
    extrapolation, interpolation = 1.0 / pos_freqs, 1.0 / (factor * pos_freqs)
    if factor <= 1.0:
        return extrapolation.float(), 1.0

    def correction_dim(rotations: float) -> float:
        return dim * math.log(cfg.rope_original_context / (rotations * 2 * math.pi)) / (2 * math.log(base))

    low, high = correction_dim(cfg.rope_beta_fast or 32.0), correction_dim(cfg.rope_beta_slow or 1.0)
    low, high = max(low, 0.0), min(high, dim - 1.0)
    if low == high:
        high += 0.001
    ramp = ((torch.arange(dim // 2, dtype=torch.float64) - low) / (high - low)).clamp(0, 1)
    keep = 1 - ramp  # share of the original (extrapolated) frequency
    inv_freq = interpolation * (1 - keep) + extrapolation * keep
    return inv_freq.float(), 0.1 * math.log(factor) + 1.0


def apply_rope(x: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """NeoX rotation of x [T, heads, dim] by cos/sin [T, dim] (each half-dim angle twice):
    pairs (i, i + dim/2) become (x_i cos - x_j sin, x_j cos + x_i sin)."""
    first, second = x.chunk(2, dim=-1)
    rotated = torch.cat([-second, first], dim=-1)  # x_i - y == x_i + (-y): the same floats
    return x * cos[:, None, :] + rotated * sin[:, None, :]


# ------------------------------------------------------------------------------ weights

Matrix = torch.Tensor | StoredMatrix  # float32 on the device, or in its stored form on the CPU


def linear(x: torch.Tensor, w: Matrix, b: torch.Tensor | None = None) -> torch.Tensor:
    """x @ w.T (+ b)."""
    if isinstance(w, StoredMatrix):
        y = w.matmul(x)
        return y if b is None else y + b
    return x @ w.T if b is None else torch.addmm(b, x, w.T)


def embedding(w: Matrix, tokens: torch.Tensor) -> torch.Tensor:
    return w.rows(tokens) if isinstance(w, StoredMatrix) else w[tokens].float()


def embedded_rows(ckpt: Checkpoint, tokens: torch.Tensor, device: torch.device) -> torch.Tensor:
    """The embedding of `tokens` from their rows alone, read one by one: the values `embedding`
    gives, without reading (1.2 GB on the 20b) or holding the whole matrix."""
    t = ckpt.tensor(_GLOBAL["embed"])
    ids = sorted(set(tokens.tolist()))
    rows = torch.cat([as_float32(t.values(i, i + 1)).reshape(1, -1) for i in ids])
    where = {token: n for n, token in enumerate(ids)}
    return rows[[where[token] for token in tokens.tolist()]].to(device)


@dataclass
class AttentionWeights:
    norm: torch.Tensor
    q_w: Matrix
    q_b: torch.Tensor
    k_w: Matrix
    k_b: torch.Tensor
    v_w: Matrix
    v_b: torch.Tensor
    o_w: Matrix
    o_b: torch.Tensor
    sinks: torch.Tensor
    native: native.AttentionLayer | None = field(default=None, repr=False, compare=False)  # made at the first step


@dataclass
class Model:
    config: GptOssConfig
    embed: Matrix
    attention: list[AttentionWeights]
    moe: list[MoELayer]
    final_norm: torch.Tensor
    lm_head: Matrix
    inv_freq: torch.Tensor  # RoPE inverse frequencies, YaRN-blended
    rope_scale: float  # YaRN's attention factor on cos and sin
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


_ATTN = {"norm": "input_layernorm.weight", "q_w": "self_attn.q_proj.weight", "q_b": "self_attn.q_proj.bias",
         "k_w": "self_attn.k_proj.weight", "k_b": "self_attn.k_proj.bias", "v_w": "self_attn.v_proj.weight",
         "v_b": "self_attn.v_proj.bias", "o_w": "self_attn.o_proj.weight", "o_b": "self_attn.o_proj.bias",
         "sinks": "self_attn.sinks"}
_GLOBAL = {"embed": "model.embed_tokens.weight", "final_norm": "model.norm.weight", "lm_head": "lm_head.weight"}


VALUES_PER_READ = 1 << 25  # 128 MB of float32 a slice, so the 580M-value embedding is never widened twice over


def _widened(shape: tuple[int, ...], read_rows) -> torch.Tensor:
    """A float32 tensor of `shape` filled from read_rows(start, stop) (the float32 values of
    rows [start, stop) of the first axis) a slice at a time: the stored copy and the integer
    intermediates of widening exist for one slice only, never for the whole matrix."""
    if len(shape) < 2:
        return as_float32(read_rows(0, shape[0]))
    out = torch.empty(shape, dtype=torch.float32)
    step = max(1, VALUES_PER_READ // math.prod(shape[1:]))
    for start in range(0, shape[0], step):
        stop = min(start + step, shape[0])
        out[start:stop] = as_float32(read_rows(start, stop)).reshape((stop - start,) + tuple(shape[1:]))
    return out


def check_activations(device: torch.device, activations: str) -> None:
    """Q8_0 activations are the CPU kernels' arithmetic: refused where those do not run."""
    if activations not in native.ACTIVATIONS:
        raise OssConvertError(f"activations {activations!r}: expected one of {', '.join(native.ACTIVATIONS)}")
    if activations == "q8" and (device.type != "cpu" or native.library() is None):
        raise OssConvertError("Q8_0 activations are the CPU kernels' arithmetic: they need --device cpu and the "
                              "kernels built (a C compiler; OSS_CONVERT_NATIVE not 0)")


def _dense_reader(ckpt: Checkpoint, device: torch.device, activations: str = "float32", mapped: bool = False):
    """HF name -> the non-expert weight on `device`: on the CPU, with the native kernels built,
    a matrix stays in its stored form (with `mapped`, in the file's pages); otherwise float32
    values."""
    keep_stored = device.type == "cpu" and native.library() is not None

    def read(hf_name: str) -> Matrix:
        t = ckpt.tensor(hf_name)
        stored = stored_matrix(t, activations, mapped) if keep_stored else None
        return stored if stored is not None else _widened(t.shape, t.values).to(device)
    return read


def _attention_weights(read, layer: int) -> AttentionWeights:
    return AttentionWeights(**{k: read(f"model.layers.{layer}.{v}") for k, v in _ATTN.items()})


def load_model(ckpt, device: torch.device, activations: str = "float32") -> Model:
    """Every weight at once, for generation (a KV cache needs all layers at every step).
    `activations`: how they meet the weights on the CPU (native.ACTIVATIONS)."""
    check_activations(device, activations)
    cfg = ckpt.require_config()
    read = _dense_reader(ckpt, device, activations)
    attention, moe = [], []
    for n in range(cfg.num_layers):
        attention.append(_attention_weights(read, n))
        moe.append(load_layer(ckpt, n, activations).to(device))
    g = {k: read(v) for k, v in _GLOBAL.items() if k != "embed"}
    # a token's row at a time: the 1.2 GB embedding stays in the file's pages (the matrices that
    # every token multiplies by are copied in: numpy puts them on huge pages, 15% faster decode)
    g["embed"] = _dense_reader(ckpt, device, activations, mapped=True)(_GLOBAL["embed"])
    inv_freq, rope_scale = yarn_frequencies(cfg)
    return Model(cfg, g["embed"], attention, moe, g["final_norm"], g["lm_head"], inv_freq.to(device),
                 rope_scale, device)


# ------------------------------------------------------------------------------ forward

KV_BLOCK = 256  # positions a cache without a reserved capacity grows by


class KVCache:
    """Every layer's keys and values ([positions, kv heads, head_dim], float32) in buffers that
    hold `capacity` positions from the first call on (generate knows its context: the prompt
    and the tokens it may add), so that a decode step writes one row instead of copying the
    whole cache; a cache that runs out grows to whole blocks of KV_BLOCK positions."""

    def __init__(self, capacity: int = 0):
        self.capacity = capacity
        self._buffers: list[tuple[torch.Tensor, torch.Tensor]] = []  # per layer: keys, values
        self._lengths: list[int] = []

    @property
    def length(self) -> int:
        return self._lengths[0] if self._lengths else 0

    @property
    def keys(self) -> list[torch.Tensor]:
        return [keys[:n] for (keys, _), n in zip(self._buffers, self._lengths)]

    @property
    def values(self) -> list[torch.Tensor]:
        return [values[:n] for (_, values), n in zip(self._buffers, self._lengths)]

    def extend(self, layer: int, k: torch.Tensor, v: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Appends k and v [T, kv heads, head_dim] to `layer`'s (layers in order, from 0);
        returns all its keys and values so far."""
        keys, values, held = self.room(layer, k.shape[0], k.shape[1:], k.dtype, k.device)
        needed = held + k.shape[0]
        keys[held:needed], values[held:needed] = k, v
        self.filled(layer, needed)
        return keys[:needed], values[:needed]

    def room(self, layer: int, count: int, row_shape: tuple[int, ...], dtype: torch.dtype,
             device: torch.device) -> tuple[torch.Tensor, torch.Tensor, int]:
        """`layer`'s key and value buffers with room for `count` more positions (rows of
        `row_shape`: kv heads, head_dim), and the positions they hold."""
        held = self._lengths[layer] if layer < len(self._lengths) else 0
        needed = held + count
        if layer == len(self._buffers):
            self._buffers.append(self._reserve(needed, row_shape, dtype, device))
            self._lengths.append(0)
        elif needed > self._buffers[layer][0].shape[0]:
            grown = self._reserve(needed, row_shape, dtype, device)
            for new, old in zip(grown, self._buffers[layer]):
                new[:held] = old[:held]
            self._buffers[layer] = grown
        return *self._buffers[layer], held

    def filled(self, layer: int, length: int) -> None:
        """`layer`'s buffers now hold `length` positions."""
        self._lengths[layer] = length

    def _reserve(self, needed: int, row_shape: tuple[int, ...], dtype: torch.dtype,
                 device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        size = self.capacity if needed <= self.capacity else -(-needed // KV_BLOCK) * KV_BLOCK
        return tuple(torch.empty((size, *row_shape), dtype=dtype, device=device) for _ in range(2))


@dataclass
class StepInputs:
    """What every layer of one forward call shares: RoPE's cos and sin for the new positions,
    and which keys each new query must not see, in full-attention and sliding-window layers."""
    cos: torch.Tensor  # [T, head_dim], YaRN's attention factor included
    sin: torch.Tensor
    hidden: torch.Tensor  # [T, S]: True where query t may not attend to key s
    hidden_in_window: torch.Tensor


def step_inputs(cfg: GptOssConfig, inv_freq: torch.Tensor, rope_scale: float, positions: torch.Tensor,
                keys: int) -> StepInputs:
    angles = positions.float()[:, None] * inv_freq[None, :]
    angles = torch.cat([angles, angles], dim=-1)
    key_pos = torch.arange(keys, device=positions.device)
    visible = key_pos[None, :] <= positions[:, None]
    in_window = visible & (positions[:, None] - key_pos[None, :] < cfg.sliding_window)
    return StepInputs(angles.cos() * rope_scale, angles.sin() * rope_scale, ~visible, ~in_window)


def project_qkv(w: AttentionWeights, h: torch.Tensor, cfg: GptOssConfig, step: StepInputs):
    """q [T, heads, hd] and k [T, kv heads, hd] (rotated) and v [T, kv heads, hd] of h."""
    T, hd, nh, nkv = h.shape[0], cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    q = linear(h, w.q_w, w.q_b).view(T, nh, hd)
    k = linear(h, w.k_w, w.k_b).view(T, nkv, hd)
    v = linear(h, w.v_w, w.v_b).view(T, nkv, hd)
    return apply_rope(q, step.cos, step.sin), apply_rope(k, step.cos, step.sin), v


def attention(w: AttentionWeights, x: torch.Tensor, cfg: GptOssConfig, layer: int, step: StepInputs,
              cache: KVCache | None) -> torch.Tensor:
    T = x.shape[0]
    hd, nh, nkv = cfg.head_dim, cfg.num_heads, cfg.num_kv_heads
    h = rms_norm(x, w.norm, cfg.rms_norm_eps)
    q, k, v = project_qkv(w, h, cfg, step)
    if cache is not None:
        k, v = cache.extend(layer, k, v)
    sliding = layer % 2 == 0  # even layers slide
    if T == 1:
        return linear(newest_position_attention(q, k, v, w.sinks, cfg, sliding), w.o_w, w.o_b)
    hidden = step.hidden_in_window if sliding else step.hidden
    # GQA without copying keys and values per query head: query head h = g * group + j reads
    # KV head g, so the queries are grouped by KV head ([T, nkv, group, hd]) instead
    q = q.view(T, nkv, nh // nkv, hd)
    scores = torch.einsum("qgjd,kgd->gjqk", q, k).reshape(nh, T, -1) / math.sqrt(hd)
    scores = scores.masked_fill(hidden[None], float("-inf"))
    sinks = w.sinks.float()[:, None, None].expand(nh, T, 1)
    logits = torch.cat([scores, sinks], dim=-1)
    probs = torch.softmax(logits - logits.amax(dim=-1, keepdim=True), dim=-1)[..., :-1]
    probs = probs.view(nkv, nh // nkv, T, -1)
    out = torch.einsum("gjqk,kgd->qgjd", probs, v).reshape(T, nh * hd)
    return linear(out, w.o_w, w.o_b)


def newest_position_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor, sinks: torch.Tensor,
                              cfg: GptOssConfig, sliding: bool) -> torch.Tensor:
    """One query [1, heads, hd], the newest position (a decode step), over its keys and values
    [S, kv heads, hd]: it sees all of them, or in a sliding-window layer the last sliding_window,
    so those are taken instead of masking the rest. [1, heads * hd]."""
    nh, nkv, hd = cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
    if sliding:
        k, v = k[-cfg.sliding_window:], v[-cfg.sliding_window:]
    scores = torch.matmul(q.view(nkv, nh // nkv, hd), k.permute(1, 2, 0)).view(nh, -1) / math.sqrt(hd)
    logits = torch.cat([scores, sinks.float()[:, None]], dim=-1)
    probs = torch.softmax(logits - logits.amax(dim=-1, keepdim=True), dim=-1)[:, :-1]
    return torch.matmul(probs.view(nkv, nh // nkv, -1), v.transpose(0, 1)).reshape(1, nh * hd)


def native_attention_takes(w: AttentionWeights, x: torch.Tensor, cache: KVCache | None) -> bool:
    """Whether a decode step's attention block runs in one native call: one token on the CPU
    (float32, contiguous), a cache to keep its keys in, and the four matrices in their stored
    form."""
    return (x.shape[0] == 1 and cache is not None and x.device.type == "cpu" and x.dtype == torch.float32
            and x.is_contiguous() and all(isinstance(m, StoredMatrix) for m in (w.q_w, w.k_w, w.v_w, w.o_w)))


def native_attention_block(w: AttentionWeights, next_norm: torch.Tensor, x: torch.Tensor, cfg: GptOssConfig,
                           layer: int, step: StepInputs, cache: KVCache) -> torch.Tensor:
    """x += attention(x), in place, of one token (native_attention_takes), and returns the MoE
    block's RMSNorm of the new x: one native call does RMSNorm, q/k/v, rotation, the new k and v
    into the cache, the attention and o. Within a few units in the last place of `attention`'s
    (the norm and the softmax are summed in another order), not bit for bit."""
    if w.native is None:
        window = cfg.sliding_window if layer % 2 == 0 else 0  # even layers slide
        w.native = native.attention_layer([m.stored_rows for m in (w.q_w, w.k_w, w.v_w, w.o_w)], w.q_w.activations,
                                          [b.float().contiguous() for b in (w.q_b, w.k_b, w.v_b, w.o_b)],
                                          w.norm.float().contiguous(), w.sinks.float().contiguous(),
                                          next_norm.float().contiguous(), cfg.num_heads, cfg.num_kv_heads,
                                          cfg.head_dim, window, cfg.rms_norm_eps)
    keys, values, held = cache.room(layer, 1, (cfg.num_kv_heads, cfg.head_dim), x.dtype, x.device)
    h = torch.empty_like(x)
    native.attention_one_token(native.library(), w.native, x, step.cos, step.sin, keys, values, held, h)
    cache.filled(layer, held + 1)
    return h


def block_forward(attn: AttentionWeights, moe: MoELayer, x: torch.Tensor, cfg: GptOssConfig, layer: int,
                  step: StepInputs, cache: KVCache | None, backend: str) -> torch.Tensor:
    """x after the block. A decode step on the CPU updates x in place (three native calls and no
    torch operation on it: each costs a step's streamed weights tens of microseconds); the
    caller's x is consumed."""
    if native_attention_takes(attn, x, cache):
        h = native_attention_block(attn, moe.norm_w, x, cfg, layer, step, cache)
        return moe_forward(moe, h, backend, residual=x)
    x = x + attention(attn, x, cfg, layer, step, cache)
    return x + moe_forward(moe, rms_norm(x, moe.norm_w, cfg.rms_norm_eps), backend)


def forward(model: Model, tokens: torch.Tensor, cache: KVCache | None = None, backend: str = "auto") -> torch.Tensor:
    """Logits [T, V] (float32) for `tokens` following whatever the cache already holds."""
    cfg = model.config
    start = cache.length if cache is not None else 0
    positions = torch.arange(start, start + tokens.shape[0], device=model.device)
    step = step_inputs(cfg, model.inv_freq, model.rope_scale, positions, start + tokens.shape[0])
    x = embedding(model.embed, tokens.to(model.device))
    for n in range(cfg.num_layers):
        x = block_forward(model.attention[n], model.moe[n], x, cfg, n, step, cache, backend)
    return linear(rms_norm(x, model.final_norm, cfg.rms_norm_eps), model.lm_head)


def streamed_logits(ckpt, windows: list[torch.Tensor], device: torch.device, backend: str = "auto",
                    progress=None, activations: str = "float32") -> list[torch.Tensor]:
    """Logits [T, V] of each window of tokens, evaluated on its own (positions from 0), with one
    layer's weights in memory at a time: every window passes layer n before layer n + 1 is
    read, so a model larger than memory (120b: 61 GB of experts) runs in a few GB. The same
    operations in the same order as `forward` without a cache, so the same floats.
    `progress(layer)` is called as each layer is done."""
    check_activations(device, activations)
    cfg = ckpt.require_config()
    read = _dense_reader(ckpt, device, activations, mapped=True)  # each matrix is used once a window
    inv_freq, rope_scale = yarn_frequencies(cfg)
    inv_freq = inv_freq.to(device)
    steps = [step_inputs(cfg, inv_freq, rope_scale, torch.arange(len(w), device=device), len(w)) for w in windows]
    xs = [embedded_rows(ckpt, w, device) for w in windows]
    for n in range(cfg.num_layers):
        attn, moe = _attention_weights(read, n), load_layer(ckpt, n, activations).to(device)
        xs = [block_forward(attn, moe, x, cfg, n, step, None, backend) for x, step in zip(xs, steps)]
        del attn, moe  # before the next layer is read
        release_freed_memory()
        if progress is not None:
            progress(n)
    final_norm, lm_head = read(_GLOBAL["final_norm"]), read(_GLOBAL["lm_head"])
    return [linear(rms_norm(x, final_norm, cfg.rms_norm_eps), lm_head) for x in xs]


def new_cache(capacity: int = 0) -> KVCache:
    """An empty cache; `capacity`: the positions to reserve room for (0: grow as needed)."""
    return KVCache(capacity)
