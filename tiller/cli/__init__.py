"""The `tiller` command line: one file per command, each ends in a `run(cfg)`."""

import typer

from tiller.cli import common
from tiller.cli.actor import actor
from tiller.cli.cai_data import cai_data
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
from tiller.cli.sft import sft
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
app.command("sft")(sft)
app.command("rm")(rm)
app.command("dpo")(dpo)
app.command("rlaif-data")(rlaif_data)
app.command("cai-data")(cai_data)
app.command("eval")(evaluate)
app.command("redteam")(redteam)
app.command("import-gguf")(import_gguf)


def main() -> None:
    """The `tiller` program (console script and `python -m tiller`)."""
    common.STANDALONE = True
    app()
