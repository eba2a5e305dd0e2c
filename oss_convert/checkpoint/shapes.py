"""The shape every GPT-OSS tensor must have under a given config, checked when a checkpoint opens.

A config that disagrees with its tensors (a hostile or mismatched config.json, a GGUF whose
metadata lies) is reported here, naming the tensor, instead of as a shape error deep inside
a conversion or a forward pass.
"""

from __future__ import annotations

import re

from ..errors import OssConvertError
from .config import GptOssConfig
from .tensor import Tensor

_LAYER = re.compile(r"model\.layers\.(\d+)\.(.+)")


def expected_shape(name: str, cfg: GptOssConfig) -> tuple | None:
    """Row-major shape of an HF-named tensor under `cfg` (None in a place the config leaves open)."""
    H, E, I, V = cfg.hidden_size, cfg.num_experts, cfg.intermediate_size, cfg.vocab_size
    q, kv = cfg.num_heads * cfg.head_dim, cfg.num_kv_heads * cfg.head_dim
    shapes = {
        "model.embed_tokens.weight": (V, H), "lm_head.weight": (V, H), "model.norm.weight": (H,),
        "input_layernorm.weight": (H,), "post_attention_layernorm.weight": (H,),
        "self_attn.q_proj.weight": (q, H), "self_attn.q_proj.bias": (q,),
        "self_attn.k_proj.weight": (kv, H), "self_attn.k_proj.bias": (kv,),
        "self_attn.v_proj.weight": (kv, H), "self_attn.v_proj.bias": (kv,),
        "self_attn.o_proj.weight": (H, q), "self_attn.o_proj.bias": (H,),
        "self_attn.sinks": (cfg.num_heads,),
        "mlp.router.weight": (E, H), "mlp.router.bias": (E,),
        "mlp.experts.gate_up_proj": (E, 2 * I, H), "mlp.experts.gate_up_proj_bias": (E, 2 * I),
        "mlp.experts.down_proj": (E, H, I), "mlp.experts.down_proj_bias": (E, H),
    }
    m = _LAYER.fullmatch(name)
    return shapes.get(m[2] if m else name)


def check_shapes(tensors: list[Tensor], cfg: GptOssConfig) -> None:
    for t in tensors:
        if t.layer is not None and t.layer >= cfg.num_layers:
            raise OssConvertError(f"{t.where}: {t.name} is in layer {t.layer}, but the config has "
                                  f"{cfg.num_layers} layers")
        want = expected_shape(t.name, cfg)
        if want is None:
            continue
        if len(want) != len(t.shape) or any(w is not None and w != s for w, s in zip(want, t.shape)):
            shown = [("?" if w is None else w) for w in want]
            raise OssConvertError(f"{t.where}: {t.name} has shape {list(t.shape)}, but the config gives "
                                  f"{shown} (hidden {cfg.hidden_size}, experts {cfg.num_experts}, expert FFN "
                                  f"{cfg.intermediate_size}, heads {cfg.num_heads}/{cfg.num_kv_heads} x "
                                  f"{cfg.head_dim}, vocab {cfg.vocab_size})")
