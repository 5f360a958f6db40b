"""`tiller keys`: make CURVE key pairs for the learner and its workers."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Optional

import typer


def keys(
    directory: Annotated[Path, typer.Argument(help="Where to write NAME.key (public) and NAME.key_secret.")],
    names: Annotated[Optional[list[str]], typer.Option("--name", help="Key pairs to make (repeatable).")] = None,
) -> None:
    """Make CURVE key pairs (default: learner and worker); share only the .key files."""
    from tiller.protocol.security import create_keys

    for name in names or ["learner", "worker"]:
        public, secret = create_keys(directory, name)
        typer.echo(f"{name}: public {public}  secret {secret}")
    typer.echo(
        "learner config:  security.server_secret_key=<learner .key_secret>, "
        "security.authorized_keys_dir=<a directory holding each worker's .key>\n"
        "worker config:   security.client_secret_key=<its .key_secret>, "
        "security.server_public_key=<learner .key>")
