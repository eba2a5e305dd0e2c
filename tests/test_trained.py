"""Properties only a trained model has, on the bundled model (fixtures/train.py) and its
held-out text (fixtures/text/heldout.txt, never seen in training)."""

from __future__ import annotations

import json
import os
import re
import subprocess
from pathlib import Path

import pytest

from tests.cli import run_cli
from tests.conftest import ROOT, need_reference
from tests.greedy import greedy

HELD_OUT = ROOT / "fixtures" / "text" / "heldout.txt"
CTX = 256
VOCAB = 576
# Mixtures from most bits per weight to fewest on this model (IQ4_XS and Q2_K both 5.58: Q2_K's
# experts fall back to Q4_0-sized blocks and IQ4_XS's to IQ4_NL, 4.5 bits each); KL against the
# original must rise along it.
MIXTURES = ["q8_0", "q6_k", "q5_k_m", "q4_k_m", "q3_k_m", "iq4_xs", "q2_k"]
# Two ports whose KLs are within this factor are "within noise": their order is not asserted.
NOISE = 1.15


def compare_full(a, b) -> dict:
    return json.loads(run_cli("compare", a, b, "--full", "--text-file", HELD_OUT, "--ctx", CTX, "--json").stdout)


@pytest.fixture(scope="module")
def comparisons(bundled, bundled_ports) -> dict[str, dict]:
    return {qtype: compare_full(bundled, bundled_ports[qtype]) for qtype in ["mxfp4", *MIXTURES]}


def bits_per_weight(path: Path) -> float:
    s = json.loads(run_cli("inspect", path, "--json").stdout)["summary"]
    return 8 * s["bytes"] / s["total_params"]


@pytest.mark.slow
def test_perplexity_is_far_below_the_vocabulary_and_the_lossless_port_changes_nothing(comparisons):
    s = comparisons["mxfp4"]["summary"]
    assert s["positions"] > 15_000, s["positions"]
    assert s["perplexity_a"] < VOCAB / 20, f"held-out perplexity {s['perplexity_a']:.2f} on {VOCAB} tokens"
    assert s["perplexity_a"] == s["perplexity_b"] and s["kl_max"] == 0 and s["top1_agreement"] == 1.0, s


def kl_order_violations(kls: dict[str, float], order: list[str]) -> list[str]:
    """Pairs (fewer bits first) whose KL is lower than a port with more bits, beyond NOISE."""
    bad = []
    for i, more in enumerate(order):
        for fewer in order[i + 1:]:
            if kls[fewer] * NOISE < kls[more]:
                bad.append(f"{fewer} (KL {kls[fewer]:.4g}) below {more} (KL {kls[more]:.4g})")
    return bad


@pytest.mark.slow
def test_kl_rises_as_bits_per_weight_fall(comparisons, bundled_ports):
    bits = {q: bits_per_weight(bundled_ports[q]) for q in MIXTURES}
    kls = {q: comparisons[q]["summary"]["kl_mean"] for q in MIXTURES}
    order = sorted(MIXTURES, key=lambda q: -round(bits[q], 2))  # (a stable sort: ties keep MIXTURES' order)
    table = ", ".join(f"{q} {bits[q]:.2f} bpw KL {kls[q]:.4g}" for q in order)
    assert order == MIXTURES, table  # the mixtures' sizes on this model, as stated above
    assert kl_order_violations(kls, order) == [], table
    assert kls["q8_0"] < 0.01 < kls["q2_k"], table
    print(table)


def test_the_order_check_fails_on_a_swapped_pair():
    kls = {"q8_0": 0.001, "q4_k_m": 0.05, "q2_k": 0.2}
    assert kl_order_violations(kls, ["q8_0", "q4_k_m", "q2_k"]) == []
    assert kl_order_violations(kls, ["q8_0", "q2_k", "q4_k_m"]) == ["q4_k_m (KL 0.05) below q2_k (KL 0.2)"]


@pytest.fixture(scope="module")
def llama_perplexity() -> Path:
    found = os.environ.get("LLAMA_PERPLEXITY") or str(ROOT / ".ci/cache/llama-server-build/bin/llama-perplexity")
    need_reference("llama-perplexity (LLAMA_PERPLEXITY, built by .ci/run)", Path(found).is_file())
    return Path(found)


def llama_kld(binary: Path, base: Path, port: Path, work: Path) -> float:
    """llama.cpp's own mean KL divergence of `port` against `base` on the held-out text."""
    logits = work / f"{base.stem}.kld"
    if not logits.exists():
        subprocess.run([str(binary), "-m", str(base), "-f", str(HELD_OUT), "-c", str(CTX), "-t", "2",
                        "--kl-divergence-base", str(logits)], check=True, capture_output=True)
    done = subprocess.run([str(binary), "-m", str(port), "-c", str(CTX), "-t", "2", "--kl-divergence-base",
                           str(logits), "--kl-divergence"], check=True, capture_output=True, text=True)
    m = re.search(r"Mean\s+KLD:\s+([0-9.]+)", done.stdout + done.stderr)
    assert m, (done.stdout + done.stderr)[-2000:]
    return float(m.group(1))


def scored_like_llama_perplexity(doc: dict) -> float:
    """Our mean KL over the positions llama-perplexity scores: in each whole window of CTX tokens,
    those from CTX/2 to CTX-2 (each predicting the next token of the window)."""
    whole = doc["summary"]["positions"] // CTX
    kls = [p["kl"] for p in doc["per_position"]
           if p["window"] < whole and CTX // 2 <= p["position"] % CTX <= CTX - 2]
    return sum(kls) / len(kls)


@pytest.mark.reference
@pytest.mark.slow
@pytest.mark.parametrize("qtype", ["q8_0", "q4_k_m", "q2_k"])
def test_compare_full_measures_the_damage_llama_cpp_measures(comparisons, bundled_ports, llama_perplexity, qtype,
                                                              tmp_path_factory):
    """SPEC §6: within 25% (or 2e-3) of llama-perplexity --kl-divergence on the same text and positions."""
    work = tmp_path_factory.getbasetemp() / "kld"
    work.mkdir(exist_ok=True)
    theirs = llama_kld(llama_perplexity, bundled_ports["mxfp4"], bundled_ports[qtype], work)
    ours = scored_like_llama_perplexity(comparisons[qtype])
    assert abs(ours - theirs) <= max(0.25 * theirs, 2e-3), f"{qtype}: ours {ours:.5f}, llama-perplexity {theirs:.5f}"
    print(f"{qtype}: KL ours {ours:.5f}, llama-perplexity {theirs:.5f}")


def test_greedy_generation_continues_with_the_training_texts_words(bundled, tiny_gguf):
    from fixtures.train import corpus
    text = HELD_OUT.read_text(encoding="utf-8")
    prose = next(p for p in text.split("\n\n")  # the first paragraph of words, not of grammar or code
                 if len(p) > 200 and sum(c.isalpha() or c == " " for c in p) / len(p) > 0.9)
    prompt = prose[:200].rsplit(" ", 1)[0]
    _, ids, text = greedy(bundled, prompt, 40)
    _, gguf_ids, _ = greedy(tiny_gguf, prompt, 40)
    assert ids == gguf_ids  # the lossless GGUF is the same model
    known = set(re.findall(r"[A-Za-z]+", corpus()[0]))
    words = [w for w in re.findall(r"[A-Za-z]+", text) if len(w) >= 3]
    assert len(words) >= 4 and sum(w in known for w in words) >= 0.8 * len(words), f"{prompt[-80:]!r} -> {text!r}"
    print(f"{prompt[-60:]!r} -> {text!r}")
