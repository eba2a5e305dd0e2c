"""The `oss-convert` command line: thin commands over the library."""

from __future__ import annotations

import functools
import json
import re
import signal
import sys
from collections.abc import Callable
from pathlib import Path

import click
import numpy as np
from click.core import ParameterSource

from . import __version__
from .errors import OssConvertError
from .files.stream import reuse_freed_chunks
from .memory.context import KV_TYPES as KV_CACHE_TYPES
from .plan.lossless import LOSSLESS, OUTTYPES
from .plan.mixtures import MIXTURES


class UserError(click.ClickException):
    """One `Error: ...` line and exit status 1: bad input."""


class CheckerUserError(UserError):
    """Bad input to a command whose exit status 1 is a finding (verify, report): status 2."""
    exit_code = 2


def user_errors(error: type[UserError] = UserError):
    """Our errors as one `Error: ...` line and `error`'s exit status; Ctrl-C and SIGTERM as a
    clean exit (temporary files are removed on the way out)."""
    def decorate(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            previous = signal.signal(signal.SIGTERM, _terminate)
            try:
                return fn(*args, **kwargs)
            except OssConvertError as e:
                raise error(str(e)) from None
            except KeyboardInterrupt:
                click.echo("Error: interrupted", err=True)
                sys.exit(130)
            finally:
                signal.signal(signal.SIGTERM, previous)
        return wrapper
    return decorate


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def refuse_unless(applies: bool, *names: str, where: str) -> None:
    """A usage error for any of the options `names` given on the command line where they do not
    apply; `where` says where they do."""
    ctx = click.get_current_context()
    given = [n for n in names if ctx.get_parameter_source(n) not in (None, ParameterSource.DEFAULT)]
    if given and not applies:
        flags = {p.name: p.opts[-1] if p.opts[-1].startswith("--") else p.opts[0] for p in ctx.command.params}
        verb = "applies" if len(given) == 1 else "apply"
        raise click.UsageError(f"{', '.join(flags[n] for n in given)}: {verb} {where}")


def refuse_cuda_q8(activations: str, device: str) -> None:
    if activations == "q8" and device == "cuda":
        raise click.UsageError("--activations q8 is the CPU kernels' arithmetic: it runs with --device cpu")


def require_runtime(command: str) -> None:
    """The runtime's dependency, checked before anything is opened or downloaded."""
    try:
        import torch  # noqa: F401
    except ImportError:
        raise OssConvertError(f"{command} runs the model on torch, which is not installed: "
                              "pip install 'oss-convert[runtime]'") from None


json_option = click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
local_dir_option = click.option("--local-dir", type=click.Path(path_type=Path),
                                help="Where to put files downloaded from the Hub (default: the Hugging Face cache).")
device_option = click.option("--device", type=click.Choice(["auto", "cuda", "cpu"]), default="auto",
                             show_default=True)
activations_option = click.option(
    "--activations", type=click.Choice(["float32", "q8"]), default="float32", show_default=True,
    help="How activations meet MXFP4/Q8_0/Q5_0/Q4_0 weights: float32, as transformers computes, or rounded to "
         "Q8_0 first, as llama.cpp's CPU backend does (CPU only: faster, at a rounding cost of the order of "
         "llama.cpp's own).")


def read_text_inputs(prompt: str | None, text_file: Path | None,
                     tokens_file: Path | None) -> tuple[str | None, list[int] | None]:
    """(text, token ids) from whichever of --prompt, --text-file and --tokens-file was given."""
    if text_file is not None:
        try:
            prompt = Path(text_file).read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as e:
            raise OssConvertError(f"{text_file}: not a readable UTF-8 text file ({e})") from None
    if tokens_file is None:
        return prompt, None
    try:
        return prompt, [int(t) for t in Path(tokens_file).read_text().split()]
    except (OSError, ValueError) as e:
        raise OssConvertError(f"{tokens_file}: expected whitespace-separated token ids ({e})") from None


def emit_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="oss-convert")
def cli():
    """Inspect, convert and verify OpenAI GPT-OSS checkpoints and their GGUF ports."""
    # The codecs follow ggml's float32 arithmetic, where an infinity or NaN in the source
    # propagates silently and validation then reports it as one error; numpy's warnings
    # about the same values would only print noise above that line.
    click.get_current_context().with_resource(np.errstate(all="ignore"))
    reuse_freed_chunks()


def parse_bytes(value: str) -> int:
    """'96GB', '80 GiB', '24g', '1.5T', '4096M' or a count of bytes; K/M/G/T count in powers of
    1024, as GPU memory is specified (a "24 GB" card holds 24 GiB)."""
    m = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]+)?)\s*([kmgt]?)(?:i?b)?\s*", value.lower())
    if not m:
        raise click.BadParameter(f"{value!r} is not a size such as 24GB, 80GiB or 96G")
    return int(float(m.group(1)) * 1024 ** " kmgt".index(m.group(2) or " "))


@cli.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@json_option
@click.option("--tensors", "show_tensors", is_flag=True, help="List every tensor, not a per-layer summary.")
@click.option("--ctx", type=click.IntRange(1, 1 << 24), default=None,
              help="Memory estimate at this context (llama.cpp's -c: all sequences together). "
                   "Default: 8192 and the model's maximum.")
@click.option("--kv-type", type=click.Choice(KV_CACHE_TYPES), default="f16", show_default=True,
              help="KV cache type (llama.cpp's -ctk/-ctv).")
@click.option("--parallel", type=click.IntRange(1, 256), default=1, show_default=True,
              help="Sequences sharing the context (llama.cpp's -np).")
@click.option("--ubatch", type=click.IntRange(1, 1 << 16), default=512, show_default=True,
              help="Micro-batch size (llama.cpp's -ub).")
@click.option("--batch", type=click.IntRange(1, 1 << 16), default=2048, show_default=True,
              help="Logical batch size (llama.cpp's -b).")
@click.option("--swa-full", is_flag=True,
              help="Sliding-window layers cache the whole context (llama.cpp's --swa-full).")
@click.option("--kv-unified", is_flag=True, help="One KV cache shared by all sequences (llama.cpp's --kv-unified).")
@click.option("--gpu-memory", type=str, default=None,
              help="GPU memory to fit into, such as 24GB or 80GiB (GB = GiB, as cards are specified): "
                   "says what fits and the largest context that does.")
@user_errors()
def inspect_cmd(path: Path, as_json: bool, show_tensors: bool, ctx: int | None, kv_type: str, parallel: int,
                ubatch: int, batch: int, swa_full: bool, kv_unified: bool, gpu_memory: str | None):
    """Report which tensors of a checkpoint or GGUF are MXFP4, BF16, F32 or quantized, and the
    memory it takes at a context, in llama.cpp and in our runtime.

    PATH is a checkpoint folder (HF or original/ layout, sharded or not), a .safetensors
    file, a .gguf (split GGUFs: any part) or a Hub repo id. Reads headers only.
    """
    from .hub import open_headers_or_models
    from .inspect import inspect_document, render_inspect
    from .inspect.survey import render_survey
    from .memory.context import DEFAULT_CONTEXT, ContextOptions

    budget = parse_bytes(gpu_memory) if gpu_memory is not None else None
    opened = open_headers_or_models(path)
    if isinstance(opened, tuple):  # a Hub repo of several GGUF models
        doc = survey(*opened)
        if as_json:
            emit_json(doc)
        else:
            click.echo(render_survey(doc))
        return
    options = ContextOptions(ctx or DEFAULT_CONTEXT, kv_type, parallel, ubatch, batch, swa_full, kv_unified)
    doc = inspect_document(opened, options, explicit_context=ctx is not None, gpu_memory=budget)
    if as_json:
        emit_json(doc)
    else:
        click.echo(render_inspect(doc, show_tensors))


def survey(ref, first_parts: list[str]) -> dict:
    """Each GGUF model of a Hub repo from its headers, with a progress bar on a terminal."""
    from tqdm import tqdm

    from .hub import open_remote_gguf
    from .inspect.survey import survey_document, survey_row
    rows = []
    for name in tqdm(first_parts, desc="headers", unit="file", disable=not sys.stderr.isatty()):
        ckpt, parts = open_remote_gguf(ref, name)
        rows.append(survey_row(name, ckpt, sum(p.size for p in parts), sum(p.bytes_read for p in parts), len(parts)))
    return survey_document(str(ref), rows)


@cli.command("models")
@click.option("--hub", "base_model", metavar="OWNER/BASE",
              help="A census of this base model's quantizations on the Hub, instead of this machine's stores.")
@click.option("--limit", type=click.IntRange(1, 10000), default=None,
              help="--hub: the N most downloaded quantization repos only.")
@click.option("--html", "html_out", type=click.Path(path_type=Path),
              help="--hub: also write the census as a page with a size-against-bits plot.")
@click.option("--force", is_flag=True, help="Overwrite the --html file if it exists.")
@click.option("--ctx", type=click.IntRange(1, 1 << 24), default=8192, show_default=True,
              help="The memory plan at this context (llama.cpp's -c).")
@click.option("--kv-type", type=click.Choice(KV_CACHE_TYPES), default="f16", show_default=True,
              help="KV cache type (llama.cpp's -ctk/-ctv).")
@click.option("--gpu-memory", type=str, default=None,
              help="GPU memory to fit into, such as 24GB: says whether each model fits at --ctx.")
@json_option
@user_errors()
def models_cmd(base_model: str | None, limit: int | None, html_out: Path | None, force: bool, ctx: int,
               kv_type: str, gpu_memory: str | None, as_json: bool):
    """List the GPT-OSS models Ollama, LM Studio, llama.cpp and the Hugging Face cache hold on
    this machine (or, with --hub, every quantization of a base model on the Hub), from headers.

    Each NAME shown works wherever a path does: ollama:gpt-oss:20b,
    lmstudio:PUBLISHER/REPO[/FILE.gguf], llamacpp:FILE.gguf, hf-cache:OWNER/REPO[:FILE.gguf].
    """
    from tqdm import tqdm
    refuse_unless(base_model is not None, "limit", "html_out", "force", where="with --hub only")
    refuse_unless(base_model is None, "ctx", "kv_type", "gpu_memory", where="to this machine's models, not to --hub")
    show = sys.stderr.isatty() and not as_json
    if base_model is not None:
        from .files.atomic import atomic_path, check_target
        from .models import census_document, render_census
        if html_out is not None:
            check_target(html_out, force)
            try:
                import matplotlib  # noqa: F401
            except ImportError:
                raise OssConvertError("--html draws its plot with matplotlib, which is not installed: "
                                      "pip install 'oss-convert[report]'") from None
        doc = census_document(base_model, limit, progress=lambda it, total: tqdm(
            it, total=total, desc="headers", unit="model", disable=not show))
        if html_out is not None:
            from .models.page import render_census_page
            with atomic_path(html_out, force) as tmp:
                tmp.write_text(render_census_page(doc), encoding="utf-8")
        emit_json(doc) if as_json else click.echo(render_census(doc))
        return
    from .memory.context import ContextOptions
    from .models import local_document, render_local
    from .stores import scan
    budget = parse_bytes(gpu_memory) if gpu_memory is not None else None
    doc = local_document(scan(), ContextOptions(ctx, kv_type), budget,
                         progress=lambda it: tqdm(it, desc="headers", unit="model", disable=not show))
    emit_json(doc) if as_json else click.echo(render_local(doc))


CONVERT_TYPES = [LOSSLESS, *MIXTURES]  # the lossless copy, then llama-quantize's mixtures


@cli.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path),
              help="The .gguf file to write (a folder with --to safetensors).")
@click.option("--to", "target", type=click.Choice(["gguf", "safetensors"]), default="gguf", show_default=True)
@click.option("--type", "qtype", type=click.Choice(CONVERT_TYPES), default="mxfp4", show_default=True,
              help="mxfp4: lossless, the FP4 bits copied. Others: llama-quantize's mixture of that name "
                   "(q4_k: every weight Q4_K, as llama-quantize --pure).")
@click.option("--outtype", type=click.Choice(list(OUTTYPES)), default="bf16", show_default=True,
              help="Lossless only: type of the non-expert 2-D weights (norms, biases, router stay F32).")
@click.option("--keep-mxfp4-experts", is_flag=True,
              help="Requantizing: keep the expert tensors lossless MXFP4, apply the mixture to the rest.")
@click.option("--install", type=click.Choice(["lmstudio", "ollama"]),
              help="lmstudio: write the GGUF where LM Studio lists it (no -o); ollama: also write a Modelfile "
                   "beside -o and run `ollama create` (or print the command where ollama is not installed).")
@click.option("--allow-requantize", is_flag=True,
              help="Requantizing a GGUF port that is already lossy (llama-quantize's flag of that name).")
@click.option("--dry-run", is_flag=True, help="Show the plan (type per tensor group and why) and stop.")
@click.option("--threads", type=click.IntRange(1, 1024), default=None,
              help="Requantizing: worker threads (default: all cores).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Machine-readable plan and result on stdout.")
@local_dir_option
@user_errors()
def convert_cmd(src: Path, out: Path | None, target: str, qtype: str, outtype: str, keep_mxfp4_experts: bool,
                install: str | None, allow_requantize: bool, dry_run: bool, threads: int | None, force: bool,
                as_json: bool, local_dir: Path | None):
    """Convert a GPT-OSS checkpoint to GGUF (or a GGUF back to safetensors).

    SRC is the original safetensors checkpoint or a lossless GGUF of it (llama.cpp's layout or
    Ollama's older one), local, on the Hub or in an app's store. Lossless by default: the MXFP4
    experts are copied bit for bit, the file is the one llama.cpp's convert_hf_to_gguf.py writes.
    With --type q4_k_m (etc.) the result is the file llama-quantize makes from it, and a report
    of what each tensor lost.
    """
    from .convert.plan_document import render_cost, render_plan
    from .convert.to_gguf import plan_conversion
    from .hub import open_downloaded

    to_gguf = target == "gguf"
    refuse_unless(to_gguf, "qtype", "outtype", "keep_mxfp4_experts", "dry_run", "threads",
                  where="to --to gguf only (--to safetensors writes the lossless HF checkpoint)")
    requantizing = to_gguf and qtype != LOSSLESS
    refuse_unless(not requantizing, "outtype", where="to the lossless --type mxfp4 only")
    refuse_unless(requantizing, "keep_mxfp4_experts", "threads", "allow_requantize",
                  where="only when requantizing (--type q4_k_m etc.)")
    refuse_unless(to_gguf and not dry_run, "install", where="to a GGUF being written (not --to safetensors, "
                                                             "not --dry-run)")
    if install == "lmstudio" and out is not None:
        raise click.UsageError("--install lmstudio chooses the path (LM Studio's models folder): leave out -o")
    if out is None and not dry_run and install != "lmstudio":
        raise click.UsageError("missing -o/--output")
    if out is not None and out.exists() and not force and not dry_run:  # before any download
        raise OssConvertError(f"{out}: already exists (use --force to overwrite)")
    if install == "ollama" and out is not None:  # its Modelfile too, before the work
        from .files.atomic import check_target
        from .stores.install import modelfile_path
        check_target(modelfile_path(out), force)
    ckpt = open_downloaded(src, local_dir)
    if install == "lmstudio":
        from .files.atomic import check_target
        from .stores.install import lmstudio_target
        out, installed_name = lmstudio_target(ckpt.model_name(), qtype)
        check_target(out, force)
    if not to_gguf:
        from .convert.to_safetensors import convert_to_safetensors
        assert out is not None  # (--dry-run is gguf's)
        result = convert_to_safetensors(ckpt, out, force=force)
        return emit_json(result) if as_json else click.echo(f"wrote {out} ({result['tensors']} tensors)", err=True)

    conversion = plan_conversion(ckpt, qtype, outtype=outtype, keep_mxfp4_experts=keep_mxfp4_experts,
                                 threads=threads, allow_requantize=allow_requantize)
    doc = conversion.document
    if dry_run:
        return emit_json({"plan": doc}) if as_json else click.echo(render_plan(doc))
    if not as_json:  # the whole plan where types are being chosen, its headline otherwise
        click.echo(render_plan(doc, groups=requantizing), err=True)
    assert out is not None  # (checked above, where it is not a dry run)
    result = conversion.run(out, force=force)
    if install == "lmstudio":
        result["installed"] = {"app": "LM Studio", "name": installed_name}
    elif install == "ollama":
        from .stores.install import install_ollama, ollama_name
        result["installed"] = {"app": "Ollama"} | install_ollama(out, ollama_name(ckpt.model_name(), qtype), force)
    if as_json:
        emit_json({"plan": doc, "result": result})
        return
    if "cost" in result:
        click.echo(render_cost(result["cost"]), err=True)
    click.echo(f"wrote {result['output']} ({result['bytes']:,} bytes, {result['tensors']} tensors)", err=True)
    installed = result.get("installed")
    if installed and installed["app"] == "LM Studio":
        click.echo(f"LM Studio lists it; elsewhere here it is {installed['name']}", err=True)
    elif installed:
        click.echo(f"wrote {installed['modelfile']}", err=True)
        click.echo(f"created {installed['name']} in Ollama" if installed["ran"] else
                   f"ollama is not installed here; to add it to Ollama run:\n  {installed['command']}", err=True)


@cli.command("compare")
@click.argument("a", type=click.Path(path_type=Path))
@click.argument("b", type=click.Path(path_type=Path))
@click.option("--full", is_flag=True, help="Run the whole model on a text and compare logits (else: MoE layers).")
@click.option("--layers", default="all", show_default=True, help="MoE mode: 'all' or a list like 0,3,5.")
@click.option("--tokens", default=64, show_default=True, type=click.IntRange(1, 1 << 20),
              help="MoE mode: hidden states per layer.")
@click.option("--seed", default=0, show_default=True, type=int, help="MoE mode: seed of the hidden states.")
@click.option("--prompt", help="--full: the text to evaluate (tokenized with A's tokenizer).")
@click.option("--tokens-file", type=click.Path(path_type=Path), help="--full: whitespace-separated token ids.")
@click.option("--text-file", type=click.Path(path_type=Path),
              help="--full: a text file to evaluate whole, in windows of --ctx (as llama-perplexity -f).")
@click.option("--ctx", default=512, show_default=True, type=click.IntRange(1, 1 << 20),
              help="--full: evaluate in windows of this many tokens.")
@click.option("--save-logits", type=click.Path(path_type=Path), help="--full: write both artifacts' logits here.")
@activations_option
@device_option
@json_option
@local_dir_option
@user_errors()
def compare_cmd(a: Path, b: Path, full: bool, layers: str, tokens: int, seed: int, prompt: str | None,
                tokens_file: Path | None, text_file: Path | None, ctx: int, save_logits: Path | None,
                activations: str, device: str, as_json: bool, local_dir: Path | None):
    """Compare two artifacts (any GPT-OSS checkpoint or GGUF) by running them.

    Default: the MoE block of chosen layers on the same hidden states (identical weights
    give identical outputs). --full: the whole model on a text: KL divergence, top-1
    agreement, logit differences and each one's perplexity.
    """
    refuse_unless(not full, "layers", "tokens", "seed", where="to the MoE comparison, not to --full")
    refuse_unless(full, "prompt", "tokens_file", "text_file", "ctx", "save_logits", "activations",
                  where="with --full only")
    if full and sum(x is not None for x in (prompt, tokens_file, text_file)) != 1:
        raise click.UsageError("--full takes one of --prompt, --text-file or --tokens-file")
    refuse_cuda_q8(activations, device)
    require_runtime("compare")
    from .hub import open_downloaded

    if full:
        from .compare import compare_full, render_full
        prompt, ids = read_text_inputs(prompt, text_file, tokens_file)
        ckpt_a, ckpt_b = open_downloaded(a, local_dir), open_downloaded(b, local_dir)
        doc = compare_full(ckpt_a, ckpt_b, tokens=ids, prompt=prompt, ctx=ctx, device=device,
                           save_logits=save_logits, activations=activations)
        return emit_json(doc) if as_json else click.echo(render_full(doc))
    from .compare import compare_moe, render_comparison

    doc = compare_moe(open_downloaded(a, local_dir), open_downloaded(b, local_dir), layers=layers, tokens=tokens,
                      device=device, seed=seed)
    return emit_json(doc) if as_json else click.echo(render_comparison(doc))


@cli.command("generate")
@click.argument("model", type=click.Path(path_type=Path))
@click.option("--prompt", required=True, help="The user message; the model's chat template frames it.")
@click.option("--max-tokens", default=64, show_default=True, type=click.IntRange(1, 1 << 16))
@activations_option
@device_option
@json_option
@local_dir_option
@user_errors()
def generate_cmd(model: Path, prompt: str, max_tokens: int, activations: str, device: str, as_json: bool,
                 local_dir: Path | None):
    """Greedy generation through the chat template, from a checkpoint or a GGUF."""
    refuse_cuda_q8(activations, device)
    require_runtime("generate")
    from .generate import generate
    from .hub import open_downloaded

    doc = generate(open_downloaded(model, local_dir), prompt, max_tokens=max_tokens, device=device,
                   activations=activations)
    if as_json:
        return emit_json(doc)
    click.echo(doc["text"])
    t = doc["timings"]
    rate = lambda v: f"{v:.1f}" if v is not None else "-"  # noqa: E731
    click.echo(f"prompt {t['prompt_n']} tokens, {rate(t['prompt_per_second'])} tokens/s; first token after "
               f"{t['time_to_first_token_ms']:.0f} ms; decode {t['predicted_n']} tokens, "
               f"{rate(t['predicted_per_second'])} tokens/s", err=True)


@cli.command("check")
@click.argument("url", required=False)
@click.option("--model", help="The model to check, where the server has several (LM Studio, Ollama).")
@click.option("--file", "file_spec", help="The GGUF the server should be running (a path, repo id or store name); "
                                          "default: the one the server names.")
@click.option("--runs", type=click.IntRange(1, 100), default=3, show_default=True)
@click.option("--tokens", "n_predict", type=click.IntRange(2, 4096), default=32, show_default=True,
              help="Tokens generated a run.")
@click.option("--kv-type", type=click.Choice(KV_CACHE_TYPES), default="f16", show_default=True,
              help="The server's KV cache type, for the memory plan.")
@click.option("--bandwidth", type=click.FloatRange(min=0.001), default=None,
              help="Memory bandwidth in GB/s where the model runs (default: the GPU's from a table of known "
                   "cards, or a read measured here).")
@click.option("--no-agreement", is_flag=True, help="Do not run our runtime on the file for the agreement line.")
@json_option
@user_errors()
def check_cmd(url: str | None, model: str | None, file_spec: str | None, runs: int, n_predict: int, kv_type: str,
              bandwidth: float | None, no_agreement: bool, as_json: bool):
    """Is a running llama-server, LM Studio or Ollama running a GPT-OSS model as it should?

    URL: the server (default: llama-server's :8080, LM Studio's :1234, Ollama's :11434 on
    localhost, the first that answers). Says which file it runs and whether its experts are
    MXFP4, its speed (the server's figures and the stream's clock), the memory it holds against
    the plan, its decode speed against the memory-bandwidth ceiling, and whether its tokens
    agree with our runtime on the same file.
    """
    from tqdm import tqdm

    from .check import check_document, render_check
    from .check.apps import DEFAULT_URLS, recognise
    from .hub import open_downloaded
    served = None
    if url is None:
        tried = []
        for candidate in DEFAULT_URLS:
            try:
                served = recognise(candidate, model)
                break
            except OssConvertError as e:
                tried.append(str(e))
        if served is None:
            raise OssConvertError("no LLM server on this machine's default ports: " + "; ".join(tried))
    else:
        served = recognise(url, model)
    spec = file_spec or served.file
    if spec is None:
        raise OssConvertError(f"{served.app} at {served.url} does not say which file {served.model} is; name it "
                              "with --file")
    ckpt = open_downloaded(spec)
    if ckpt.config is None:
        raise OssConvertError(f"{spec}: not a GPT-OSS model ({ckpt.architecture or 'no architecture'}); "
                              "check knows GPT-OSS only")
    compare_tokens: Callable | None = None
    if not no_agreement:
        try:
            import torch  # noqa: F401

            from .check.agreement import agreement as compare_tokens
        except ImportError:  # the agreement line says it was skipped, and why
            pass
    show = sys.stderr.isatty() and not as_json
    doc = check_document(served, ckpt, str(spec), runs=runs, n_predict=n_predict, kv_type=kv_type,
                         bandwidth=bandwidth * 1e9 if bandwidth else None, agreement=compare_tokens,
                         no_agreement="--no-agreement" if no_agreement else None,
                         progress=lambda n: tqdm(range(n), desc="runs", disable=not show))
    emit_json(doc) if as_json else click.echo(render_check(doc))


@cli.command("verify")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("port", type=click.Path(path_type=Path))
@json_option
@click.option("--require-fp4", is_flag=True, help="Also fail unless every MXFP4 tensor is bit-identical MXFP4.")
@local_dir_option
@user_errors(CheckerUserError)  # 1 is a finding: something is lossy, missing or wrong
def verify_cmd(src: Path, port: Path, as_json: bool, require_fp4: bool, local_dir: Path | None):
    """Prove whether PORT (any GPT-OSS GGUF) preserves the FP4 bits of SRC, tensor by tensor.

    Exit status: 0 when every tensor is bit-identical or a reference requantization and the
    metadata agrees; 1 when something is lossy, missing or wrong (with --require-fp4, also
    when the experts are not bit-identical MXFP4); 2 for unreadable inputs.
    """
    from .hub import open_downloaded
    from .verify import check_inputs, exit_status, render, verify

    source, port_ckpt = open_downloaded(src, local_dir), open_downloaded(port, local_dir)
    check_inputs(source, port_ckpt)
    digests = start_blob_digests(source, port_ckpt)
    doc = verify(source, port_ckpt)
    if digests is not None:
        digests.result()  # a corrupt blob is an error, whatever the comparison found
    if as_json:
        emit_json(doc)
    else:
        click.echo(render(doc))
    sys.exit(exit_status(doc, require_fp4))


def start_blob_digests(*ckpts):
    """Ollama's blobs among the inputs hashed against their digests in a thread beside verify's
    own reads (hashlib lets go of the GIL, and both read the same pages), or None where there
    are none; `.result()` raises where a blob does not match."""
    from concurrent.futures import ThreadPoolExecutor

    from .stores.ollama import check_digests, named_blobs
    blobs = named_blobs(str(f) for c in ckpts for f in c.files)
    if not blobs:
        return None
    pool = ThreadPoolExecutor(1)
    future = pool.submit(check_digests, blobs)
    pool.shutdown(wait=False)
    return future


@cli.command("report")
@click.argument("src", type=click.Path(path_type=Path))
@click.argument("port", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="The HTML file to write (self-contained: open it anywhere, attach it anywhere).")
@click.option("--text-file", type=click.Path(path_type=Path),
              help="Also run the whole model over this text, in windows of --ctx.")
@click.option("--prompt", help="Also run the whole model over this text.")
@click.option("--tokens-file", type=click.Path(path_type=Path), help="Also run the whole model over these token ids.")
@click.option("--ctx", default=512, show_default=True, type=click.IntRange(1, 1 << 20),
              help="Window of the whole-model run, in tokens.")
@click.option("--layers", default="all", show_default=True, help="MoE comparison: 'all' or a list like 0,3,5.")
@click.option("--tokens", default=64, show_default=True, type=click.IntRange(1, 1 << 20),
              help="MoE comparison: hidden states per layer.")
@click.option("--seed", default=0, show_default=True, type=int, help="MoE comparison: seed of the hidden states.")
@device_option
@click.option("--json", "as_json", is_flag=True,
              help="Also write the report's data as JSON beside it (OUT with the suffix .json).")
@click.option("--force", is_flag=True, help="Overwrite OUT (and its .json) if they exist.")
@local_dir_option
@user_errors(CheckerUserError)  # as verify: 1 is a finding
def report_cmd(src: Path, port: Path, out: Path, text_file: Path | None, prompt: str | None, tokens_file: Path | None,
               ctx: int, layers: str, tokens: int, seed: int, device: str, as_json: bool, force: bool,
               local_dir: Path | None):
    """A self-contained HTML page on PORT against SRC, with plots.

    verify's verdict and figures, the error per layer, tensor and expert, the MoE blocks
    compared, and with a text the whole model's KL per position and perplexities. Exits as
    verify does: 0, 1 for a finding, 2 for bad input."""
    if sum(x is not None for x in (prompt, tokens_file, text_file)) > 1:
        raise click.UsageError("report takes at most one of --prompt, --text-file or --tokens-file")
    refuse_unless(any(x is not None for x in (prompt, tokens_file, text_file)), "ctx",
                  where="with a text (--text-file, --prompt or --tokens-file)")
    require_runtime("report")
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        raise OssConvertError("report draws its plots with matplotlib, which is not installed: "
                              "pip install 'oss-convert[report]'") from None
    from .files.atomic import atomic_path, check_target
    from .hub import open_downloaded
    from .report import build_report, render_page

    json_out = out.with_suffix(".json") if as_json else None
    if json_out == out:
        raise click.UsageError(f"-o {out}: with --json the data goes beside the page as {out.name}; "
                               "name the page .html")
    for target in (out, json_out):
        if target is not None:
            check_target(target, force)
    prompt, ids = read_text_inputs(prompt, text_file, tokens_file)
    source, port_ckpt = open_downloaded(src, local_dir), open_downloaded(port, local_dir)
    doc = build_report(source, port_ckpt, prompt=prompt, tokens=ids, ctx=ctx, layers=layers, moe_tokens=tokens,
                       seed=seed, device=device)
    page = render_page(doc)
    with atomic_path(out, force) as tmp:
        tmp.write_text(page, encoding="utf-8")
    if json_out is not None:
        with atomic_path(json_out, force) as tmp:
            tmp.write_text(json.dumps(doc, indent=1, default=str))
    click.echo(doc["verify"]["summary"]["verdict"])
    click.echo(f"wrote {out} ({len(page.encode()):,} bytes)" + (f" and {json_out}" if json_out else ""), err=True)
    sys.exit(doc["exit_status"])


def main():
    cli(prog_name="oss-convert")


if __name__ == "__main__":
    main()
