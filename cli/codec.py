"""`journeys codec ...`: the payload keys (ids only on screen unless you ask for a new key).

Rotation: add a new key, make it active, restart workers and API. Keep every old key
in the ring while any run started under it may still be running and while Temporal
keeps its history (the namespace retention): the worker needs it to replay, the
codec server to show it.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path
from typing import Annotated

import typer

from core.codec import KeyRing, KeyRingError
from core.config import Settings, get_settings

NAME = "codec"
app = typer.Typer(no_args_is_help=True, help="Payload encryption keys (AES-256-GCM).")


def _ring(settings: Settings) -> KeyRing:
    s = settings.secret_values()
    return KeyRing.from_spec(s["codec_keys"], active=s["codec_active_key"])


def _next_id(ring: KeyRing) -> str:
    numbers = [int(m.group(1)) for k in ring.keys if (m := re.fullmatch(r"k(\d+)", k))]
    return f"k{max(numbers, default=0) + 1}"


@app.command("keys")
def list_keys() -> None:
    """List the key ids of the ring and which one encrypts (no key material)."""
    ring = _ring(get_settings())
    for key_id in ring.keys:
        print(f"{key_id}{'  (active)' if key_id == ring.active_id else ''}")


@app.command("rotate")
def rotate(
    key_id: Annotated[
        str | None, typer.Option("--id", help="Id of the new key (default kN+1)")
    ] = None,
) -> None:
    """Add a new key and make it the active one; old keys stay for decryption.

    With CODEC_KEYS set (production) this prints the new CODEC_KEYS/CODEC_ACTIVE_KEY
    values for your secret store. Without (dev) it updates $JOURNEYS_HOME/secrets.json.
    """
    settings = get_settings()
    ring = _ring(settings)
    new_id = key_id or _next_id(ring)
    if new_id in ring.keys:
        raise typer.BadParameter(f"key id {new_id!r} is already in the ring", param_hint="--id")
    spec = settings.secret_values()["codec_keys"] + f",{new_id}:{KeyRing.generate_key_b64()}"
    try:
        KeyRing.from_spec(spec, new_id)  # validates the id and the whole ring
    except KeyRingError as exc:
        raise typer.BadParameter(str(exc), param_hint="--id") from None
    if settings.codec_keys:
        print("Set these in your secret store, then restart every worker and API process:")
        print(f"CODEC_KEYS={spec}")
        print(f"CODEC_ACTIVE_KEY={new_id}")
    else:
        _update_dev_secrets(settings.home / "secrets.json", spec, new_id)
        where = settings.home / "secrets.json"
        print(f"{new_id} is now the active key in {where}; restart journeys dev.")
    print("Keep the old keys until runs started under them have ended and their histories expired.")


def _update_dev_secrets(path: Path, spec: str, active: str) -> None:
    data = json.loads(path.read_text())
    data["codec_keys"], data["codec_active_key"] = spec, active
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)
