"""Command-line interface. Commands only parse arguments and call typed library functions."""

from __future__ import annotations

import typer

app = typer.Typer(
    name="lovaszseg",
    help="Semantic segmentation with the Lovász losses: train, evaluate, predict and submit.",
    no_args_is_help=False,
    add_completion=False,
    pretty_exceptions_show_locals=False,
)
data_app = typer.Typer(help="Generate and inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")
