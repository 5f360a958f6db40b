"""The `tiller` command line: one file per command, each ends in a `run(cfg)`."""

import typer

from tiller.cli import common
from tiller.cli.actor import actor
from tiller.cli.judge import judge
from tiller.cli.keys import keys
from tiller.cli.learner import learner
from tiller.cli.plot import plot
from tiller.cli.run import run
from tiller.cli.status import status

app = typer.Typer(help="Tiller: asynchronous online alignment (vLLM actors, judges, a DeepSpeed learner).",
                  no_args_is_help=True, add_completion=False)
app.command("run")(run)
app.command("learner")(learner)
app.command("actor")(actor)
app.command("judge")(judge)
app.command("keys")(keys)
app.command("plot")(plot)
app.command("status")(status)


def main() -> None:
    """The `tiller` program (console script and `python -m tiller`)."""
    common.STANDALONE = True
    app()
