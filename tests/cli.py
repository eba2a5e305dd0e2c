"""The command line as tests run it: in process through click's runner, the exit code always
checked."""

from __future__ import annotations

from click.testing import CliRunner, Result

from oss_convert.cli import cli


def run_cli(*args, code: int | None = 0) -> Result:
    """`oss-convert ARGS`; its exit code must be `code` (None: any, for a test that looks at it
    itself). The output says what went wrong where it is not."""
    result = CliRunner().invoke(cli, [str(a) for a in args])
    if code is not None:
        crash = f"\n{result.exception!r}" if result.exception and not isinstance(result.exception, SystemExit) else ""
        assert result.exit_code == code, f"oss-convert {' '.join(map(str, args))}: exit {result.exit_code}, " \
                                         f"expected {code}\n{result.output}{crash}"
    return result
