"""Every port kind the Hub ships, made here by the real llama-quantize from llama.cpp's converter
output: inspect and verify account for every tensor without a traceback, and the runtime's
logits on the port are llama.cpp's logits on the same port."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from gguf import GGMLQuantizationType as T

from oss_convert.checkpoint import open_checkpoint
from oss_convert.formats.registry import QUANTIZERS
from oss_convert.runtime.execution.forward import forward, load_model
from tests.cli import run_cli

# llama_ftype of each kind (include/llama.h)
KINDS = {"F16": 1, "BF16": 32, "Q8_0": 7, "Q6_K": 18, "Q5_K_M": 17, "Q5_K_S": 16, "Q5_1": 9, "Q5_0": 8,
         "Q4_K_M": 15, "Q4_K_S": 14, "Q4_1": 3, "Q4_0": 2, "Q3_K_L": 13, "Q3_K_M": 12, "Q3_K_S": 11,
         "Q2_K": 10, "IQ4_XS": 30, "IQ4_NL": 25, "MXFP4_MOE": 38}
TOKENS = [(i * 37 + 11) % 350 for i in range(96)]


@pytest.fixture(scope="module")
def ports(checkpoints, llama_quantized):
    """(source checkpoint, port) per (model, kind): llama-quantize's file from llama.cpp's converter output."""
    return lambda model, kind: (checkpoints[model], llama_quantized(checkpoints[model], KINDS[kind]))


@pytest.mark.reference
@pytest.mark.parametrize("model", ["tiny", "mid-sharded"])
@pytest.mark.parametrize("kind", list(KINDS))
def test_inspect_and_verify_account_for_every_tensor(ports, model, kind):
    src, port = ports(model, kind)
    stored = open_checkpoint(port).tensors
    run = run_cli("inspect", port, "--json")
    doc = json.loads(run.output)
    assert len(doc["tensors"]) == len(stored)
    assert sum(f["tensors"] for f in doc["summary"]["formats"].values()) == len(stored)

    run = run_cli("verify", src, port, "--json", code=None)
    assert run.exit_code in (0, 1), run.output  # 1: lossy; 2 would be an input it could not read
    report = json.loads(run.output)
    assert {t["port"] for t in report["tensors"]} == {t.name for t in stored}
    # every tensor of the port is a tensor of the model, kept or requantized, with its error measured
    assert {t["status"] for t in report["tensors"]} <= {"bit-identical", "reference-requantized", "lossy"}
    assert all("snr_db" in t for t in report["tensors"] if t["status"] != "bit-identical")
    # where we have every quantizer the port used, it is recognised as exactly llama-quantize's
    if {t.ggml_type for t in stored} <= set(QUANTIZERS) | {T.F32, T.F16, T.BF16, T.MXFP4}:
        assert {t["status"] for t in report["tensors"]} <= {"bit-identical", "reference-requantized"}


def mean_kl(p_logits: np.ndarray, q_logits: np.ndarray) -> float:
    p = torch.log_softmax(torch.from_numpy(p_logits).double(), -1)
    q = torch.log_softmax(torch.from_numpy(q_logits).double(), -1)
    return float((p.exp() * (p - q)).sum(-1).mean())


@pytest.mark.reference
@pytest.mark.parametrize("kind", list(KINDS))
def test_runtime_logits_are_llama_cpps_on_the_same_port(ports, llama_cpp, kind):
    """Float weights give llama.cpp's logits to KL < 1e-3. For quantized weights libllama's CPU
    backend also rounds the activations (to Q8_0/Q8_K blocks before each quantized dot product),
    which our float32 arithmetic does not, so the bound there is that rounding's: KL < 5e-3 over
    96 tokens, measured 9e-4 to 3.4e-3 on this fixture."""
    _, port = ports("tiny", kind)
    llm = llama_cpp.Llama(model_path=str(port), n_ctx=512, n_batch=512, verbose=False, logits_all=True, n_threads=2)
    llm.eval(TOKENS)
    reference = np.array(llm.scores[: len(TOKENS)])
    with torch.no_grad():
        mine = forward(load_model(open_checkpoint(port), torch.device("cpu")), torch.tensor(TOKENS)).numpy()
    kl = mean_kl(reference, mine)
    assert kl < (1e-3 if kind in ("F16", "BF16") else 5e-3), kl
    assert (reference.argmax(-1) == mine.argmax(-1)).mean() > 0.9
