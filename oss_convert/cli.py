"""The `oss-convert` command line: thin commands over the library."""

from __future__ import annotations

import functools
import json
import signal
import sys
from pathlib import Path

import click

from . import __version__
from .errors import OssConvertError

BUNDLED_MODEL = Path(__file__).resolve().parent.parent / "fixtures" / "tiny"


def user_errors(fn):
    """Turn our errors into one `Error: ...` line; SIGTERM into a clean exit (temp files removed)."""
    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        previous = signal.signal(signal.SIGTERM, _terminate)
        try:
            return fn(*args, **kwargs)
        except OssConvertError as e:
            raise click.ClickException(str(e)) from None
        except KeyboardInterrupt:
            click.echo("Error: interrupted", err=True)
            sys.exit(130)
        finally:
            signal.signal(signal.SIGTERM, previous)
    return wrapper


def _terminate(signum, frame):
    raise SystemExit(128 + signum)


def emit_json(doc) -> None:
    click.echo(json.dumps(doc, indent=2, default=str))


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="oss-convert")
def cli():
    """Inspect, convert and verify OpenAI GPT-OSS checkpoints and their GGUF ports."""


@cli.command("inspect")
@click.argument("path", type=click.Path(path_type=Path))
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@click.option("--tensors", "show_tensors", is_flag=True, help="List every tensor, not a per-layer summary.")
@user_errors
def inspect_cmd(path: Path, as_json: bool, show_tensors: bool):
    """Report which tensors of a checkpoint or GGUF are MXFP4, BF16, F32 or quantized.

    PATH is a checkpoint folder (HF or original/ layout, sharded or not), a .safetensors
    file, or a .gguf (split GGUFs: any part). Reads headers only.
    """
    from .checkpoint import open_checkpoint
    from .inspect import inspect_report, render_report

    doc = inspect_report(open_checkpoint(path))
    if as_json:
        emit_json(doc)
    else:
        click.echo(render_report(doc, show_tensors))


@cli.command("convert")
@click.argument("src", type=click.Path(path_type=Path))
@click.option("-o", "--output", "out", type=click.Path(path_type=Path), required=True,
              help="The .gguf file to write (a folder with --to safetensors).")
@click.option("--to", "target", type=click.Choice(["gguf", "safetensors"]), default="gguf", show_default=True)
@click.option("--type", "qtype", type=click.Choice(["mxfp4"]), default="mxfp4", show_default=True,
              help="Expert weights: mxfp4 copies the FP4 bits unchanged.")
@click.option("--outtype", type=click.Choice(["bf16", "f16", "f32", "q8_0"]), default="bf16", show_default=True,
              help="Type of the non-expert 2-D weights (norms, biases, router stay F32).")
@click.option("--force", is_flag=True, help="Overwrite OUT if it exists.")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON summary on stdout.")
@user_errors
def convert_cmd(src: Path, out: Path, target: str, qtype: str, outtype: str, force: bool, as_json: bool):
    """Convert a GPT-OSS safetensors checkpoint to GGUF (or a GGUF back to safetensors)."""
    if target == "safetensors":
        from .convert.to_safetensors import convert_to_safetensors
        result = convert_to_safetensors(src, out, force=force)
    else:
        from .convert.to_gguf import convert_lossless
        result = convert_lossless(src, out, outtype=outtype, force=force)
    if as_json:
        emit_json(result)
    else:
        click.echo(f"wrote {result['output']} ({result['bytes']:,} bytes, {result['tensors']} tensors)", err=True)


def main():
    cli(prog_name="oss-convert")


if __name__ == "__main__":
    main()
