"""The `attnprof` command line: each command parses, calls one library function, prints.

Bad input (attnprof.errors.UsageError, or click's own usage errors) becomes one line on stderr and
exit status 2. Heavy imports live inside the commands so that `attnprof --help` is instant. One
module per group of commands; importing them registers the commands on the group.
"""

from attnprof.cli import analysis, compare, dashboard, results, sweep  # noqa: F401  (registers the commands)
from attnprof.cli.group import cli


def main():
    cli(prog_name="attnprof")


__all__ = ["cli", "main"]
