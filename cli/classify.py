"""`journeys classify`: JSON event lines on stdin, verdict lines on stdout (SPEC section 5).

Per-message state is kept across lines, so a trap-link hit or a link sweep re-judges
earlier lines (`"revised": true`). Time comes from the lines, never the clock, so an
old log is re-judged the same way. Uses the network list in force (a refreshed list
under JOURNEYS_HOME, else the shipped one) unless --networks names another.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from core.config import get_settings


def register(app: typer.Typer) -> None:
    @app.command()
    def classify(
        networks: Annotated[
            Path | None,
            typer.Option(
                help="A network list JSON to use instead of the one in force", dir_okay=False
            ),
        ] = None,
    ) -> None:
        """Judge open/click events: JSON lines in, one verdict line per event out."""
        from classifier import Classifier, NetworkListError, classify_stream, load_document_text
        from services.network_list import load_active

        try:
            if networks is not None:
                index = load_document_text(networks.read_text(encoding="utf-8"))[1]
            else:
                index = load_active(get_settings().home).index
        except (OSError, NetworkListError) as exc:
            print(f"error: cannot load the network list: {exc}", file=sys.stderr)
            raise typer.Exit(2) from None
        out = sys.stdout
        try:
            for line in classify_stream(sys.stdin, Classifier(index)):
                out.write(line + "\n")
                out.flush()  # a pipe reader sees each verdict as soon as it exists
        except BrokenPipeError:
            raise typer.Exit(0) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
