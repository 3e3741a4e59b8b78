"""`journeys networks ...`: the scanner/proxy network list the classifier uses.

`update` fetches the providers' published lists (PUBLISHED_SOURCES) when online, or reads
saved copies with --from-dir, and writes a refreshed, dated list to
$JOURNEYS_HOME/scanner_networks.json, which overrides the shipped one. Nothing is
written unless the new list is complete and valid.
"""

from __future__ import annotations

import asyncio
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Annotated
from urllib.parse import urlsplit

import typer

from core.config import get_settings

NAME = "networks"
app = typer.Typer(
    no_args_is_help=True, help="The scanner and proxy network list of the classifier."
)


def _fail(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    raise typer.Exit(2)


def source_filename(fetch: str) -> str:
    """The file name a saved copy of a source has in --from-dir."""
    if fetch.startswith("dns-txt:"):
        return f"dns-txt_{fetch.removeprefix('dns-txt:')}.txt"
    parts = urlsplit(fetch)
    return (parts.netloc + parts.path).strip("/").replace("/", "_")


def _host(fetch: str) -> str:
    if fetch.startswith("dns-txt:"):
        return fetch.removeprefix("dns-txt:")
    return urlsplit(fetch).netloc


@dataclass
class Fetched:
    texts: dict[str, str]
    failures: dict[str, str]  # fetch address -> short reason (no response bodies)


async def _fetch_one(fetch: str, seconds: float) -> str:
    if fetch.startswith("dns-txt:"):
        import dns.asyncresolver

        answer = await dns.asyncresolver.resolve(
            fetch.removeprefix("dns-txt:"), "TXT", lifetime=seconds
        )
        return "\n".join(
            b"".join(rdata.strings).decode("ascii", "replace")  # type: ignore[attr-defined]
            for rdata in answer
        )
    import httpx

    async with httpx.AsyncClient(timeout=seconds, follow_redirects=True) as client:
        response = await client.get(fetch)
        response.raise_for_status()
        return response.text


def _reason(exc: BaseException) -> str:
    import httpx

    if isinstance(exc, httpx.HTTPStatusError):
        return f"HTTP {exc.response.status_code}"
    if isinstance(exc, httpx.ConnectError | httpx.ConnectTimeout):
        return "cannot connect"
    if isinstance(exc, httpx.TimeoutException | TimeoutError):
        return "timed out"
    name = type(exc).__name__
    if name in ("NXDOMAIN", "NoAnswer", "NoNameservers", "LifetimeTimeout"):
        return "DNS lookup failed"
    return name


async def fetch_sources(fetches: list[str], seconds: float) -> Fetched:
    results = await asyncio.gather(
        *(_fetch_one(f, seconds) for f in fetches), return_exceptions=True
    )
    texts: dict[str, str] = {}
    failures: dict[str, str] = {}
    for fetch, result in zip(fetches, results, strict=True):
        if isinstance(result, BaseException):
            failures[fetch] = _reason(result)
        else:
            texts[fetch] = result
    return Fetched(texts, failures)


def read_dir(directory: Path, fetches: list[str]) -> dict[str, str]:
    texts = {}
    for fetch in fetches:
        path = directory / source_filename(fetch)
        if path.is_file():
            texts[fetch] = path.read_text(encoding="utf-8", errors="replace")
    return texts


@app.command("update")
def update(
    from_dir: Annotated[
        Path | None,
        typer.Option(
            "--from-dir",
            help="Build from saved copies of the sources (names: `journeys networks sources`)",
            file_okay=False,
        ),
    ] = None,
    keep_missing: Annotated[
        bool,
        typer.Option(
            help="Keep the current entries of sources that could not be fetched or are not in DIR"
        ),
    ] = False,
    timeout: Annotated[float, typer.Option(help="Seconds per source when fetching")] = 20.0,
) -> None:
    """Refresh the network list from the providers' published sources."""
    from classifier import PUBLISHED_SOURCES, NetworkListError, build_networks_document
    from services.network_list import current_document, write_override

    settings = get_settings()
    fetches = list(dict.fromkeys(spec.fetch for spec in PUBLISHED_SOURCES))
    if from_dir is not None:
        if not from_dir.is_dir():
            _fail(f"--from-dir {from_dir} is not a directory")
        texts = read_dir(from_dir, fetches)
        if not texts:
            _fail(
                f"no saved source in {from_dir}; expected files named as "
                "`journeys networks sources` lists"
            )
        missing = [f for f in fetches if f not in texts]
        if missing and not keep_missing:
            _fail(
                f"{len(missing)} of {len(fetches)} sources are not in {from_dir} "
                f"(first: {source_filename(missing[0])}); add them or pass --keep-missing"
            )
    else:
        got = asyncio.run(fetch_sources(fetches, timeout))
        texts = got.texts
        if not texts:
            first = next(iter(got.failures.items()))
            _fail(
                f"cannot fetch any published network source (no network access?): "
                f"{_host(first[0])}: {first[1]}; save the sources and use --from-dir DIR "
                "(file names: `journeys networks sources`)"
            )
        if got.failures and not keep_missing:
            first = next(iter(got.failures.items()))
            _fail(
                f"{len(got.failures)} of {len(fetches)} sources failed (first: {_host(first[0])}: "
                f"{first[1]}); nothing written; retry, or pass --keep-missing to keep their entries"
            )
    base, base_path = current_document(settings.home)
    try:
        document = build_networks_document(texts, date.today(), base=base)
        path = write_override(settings.home, document)
    except NetworkListError as exc:
        _fail(f"the new network list is not valid ({exc}); nothing written")
        return
    scopes = Counter(entry["scope"] for entry in document["entries"])
    print(
        f"wrote {path}: {len(document['entries'])} networks as of {document['as_of']} "
        f"({len(texts)} of {len(fetches)} sources refreshed; "
        + ", ".join(f"{k} {v}" for k, v in sorted(scopes.items()))
        + ")"
    )
    if base_path is None:
        print("it now overrides the shipped list (journeys networks reset goes back)")


@app.command("sources")
def sources() -> None:
    """The published sources, and the file name each has when saved for --from-dir."""
    from classifier import PUBLISHED_SOURCES

    seen = set()
    for spec in PUBLISHED_SOURCES:
        if spec.fetch in seen:
            continue
        seen.add(spec.fetch)
        print(f"{source_filename(spec.fetch)}\t{spec.fetch}\t{spec.owner} ({spec.scope})")


@app.command("show")
def show() -> None:
    """The list in force: where it comes from, its date and what it holds."""
    from services.network_list import current_document

    doc, path = current_document(get_settings().home)
    scopes = Counter(entry["scope"] for entry in doc["entries"])
    where = str(path) if path is not None else "shipped with journeys"
    print(f"{where}: {len(doc['entries'])} networks as of {doc['as_of']}")
    for scope, n in sorted(scopes.items()):
        print(f"  {scope}: {n}")


@app.command("reset")
def reset() -> None:
    """Remove the refreshed list and go back to the shipped one."""
    from services.network_list import override_path

    path = override_path(get_settings().home)
    if path.exists():
        path.unlink()
        print(f"removed {path}; the shipped list is in force")
    else:
        print("the shipped list is already in force")
