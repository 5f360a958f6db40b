"""The `tiller` command line: one file per command, each ends in a `run(cfg)`."""

from importlib import metadata
from typing import Annotated

import typer

from tiller.cli import common
from tiller.cli.actor import actor
from tiller.cli.cai_data import cai_data
from tiller.cli.config_cmd import config
from tiller.cli.dpo import dpo
from tiller.cli.evaluate import evaluate
from tiller.cli.import_gguf import import_gguf
from tiller.cli.judge import judge
from tiller.cli.keys import keys
from tiller.cli.learner import learner
from tiller.cli.plot import plot
from tiller.cli.rlaif_data import rlaif_data
from tiller.cli.redteam import redteam
from tiller.cli.rm import rm
from tiller.cli.run import run
from tiller.cli.self_data import self_data
from tiller.cli.sft import sft
from tiller.cli.status import status

app = typer.Typer(help="Tiller: asynchronous online alignment (vLLM actors, judges, a DeepSpeed learner).",
                  no_args_is_help=True, add_completion=False,
                  context_settings={"help_option_names": ["-h", "--help"]})  # subcommands inherit it


def _version() -> str:
    """The installed distribution's version (pyproject.toml); a bare source tree has no metadata."""
    try:
        return metadata.version("tiller")
    except metadata.PackageNotFoundError:
        import tiller

        return getattr(tiller, "__version__", "unknown")


def _print_version(value: bool) -> None:
    if value:
        typer.echo(f"tiller {_version()}")
        raise typer.Exit(0)


@app.callback()
def _options(version: Annotated[bool, typer.Option(
        "--version", is_eager=True, callback=_print_version, help="Print the version and exit.")] = False) -> None:
    """Options before the command (`tiller --version`)."""


app.command("run")(run)
app.command("learner")(learner)
app.command("actor")(actor)
app.command("judge")(judge)
app.command("keys")(keys)
app.command("plot")(plot)
app.command("status")(status)
app.command("sft")(sft)
app.command("rm")(rm)
app.command("dpo")(dpo)
app.command("rlaif-data")(rlaif_data)
app.command("cai-data")(cai_data)
app.command("self-data")(self_data)
app.command("eval")(evaluate)
app.command("redteam")(redteam)
app.command("import-gguf")(import_gguf)
app.command("config")(config)


def main() -> None:
    """The `tiller` program (console script and `python -m tiller`)."""
    common.STANDALONE = True
    app()
