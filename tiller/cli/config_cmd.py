"""`tiller config [SECTION]`: every config key with its default and what it does, as YAML.

    tiller config                       # the whole tree's defaults
    tiller config learner.pg            # one section
    tiller config learner -c configs/demo.yaml learner.lr=1e-6   # a file's resolved values instead

The comments come from the schema's source (tiller/config/describe.py), so they cannot drift from it.
"""

from __future__ import annotations

from typing import Annotated, Optional

import typer

from tiller.cli.common import ConfigOption, Overrides, resolve
from tiller.config import Config
from tiller.config.describe import render, sections


def config(
    section: Annotated[Optional[str], typer.Argument(
        help="A section, e.g. learner or learner.pg (default: the whole tree).")] = None,
    overrides: Overrides = None,
    config: ConfigOption = None,
) -> None:
    """Print the config as YAML with each key's comment and range: the defaults, or with --config or
    overrides the values they resolve to."""
    overrides = list(overrides or [])
    if section is not None and "=" in section:  # `tiller config learner.lr=1e-6`: an override, no section
        section, overrides = None, [section, *overrides]
    # no file, no overrides: the schema's defaults (`auto`, null) as a file would write them; otherwise what
    # the loader resolves them to, which is what a run uses (learner.pg.kl_estimator auto -> k2). hub=False:
    # printing a config downloads nothing
    cfg = resolve(config, overrides, False, hub=False) if config is not None or overrides else Config()
    node = cfg
    if section is not None:
        known = sections(cfg)
        if section not in known:
            hint = "; a config file goes after --config" if section.endswith((".yaml", ".yml")) else ""
            typer.echo(f"tiller config: unknown section {section!r} (known: {', '.join(known)}){hint}", err=True)
            raise typer.Exit(2)
        node = known[section]
    typer.echo(render(node), nl=False)
