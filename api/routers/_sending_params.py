"""Path and query parameters of the sending routes, bounded so that no input reaches the
database unchecked (a NUL byte or an out-of-range integer would otherwise be a 500)."""

from typing import Annotated

from fastapi import Path, Query

# Opaque contact ids ("c_<hex>").
ContactId = Annotated[str, Path(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
# Consent categories (dsl RefKey shape); checked again by the service for a clear message.
CategoryPath = Annotated[str, Path(max_length=128)]
CategoryQuery = Annotated[
    str | None, Query(max_length=128, pattern=r"^(\*|[A-Za-z0-9][A-Za-z0-9_.:-]*)$")
]
TemplateKey = Annotated[str, Path(max_length=100, pattern=r"^[a-z0-9][a-z0-9_.-]*$")]
Limit = Annotated[int, Query(ge=1, le=1000)]
Offset = Annotated[int, Query(ge=0, le=10_000_000)]
RowId = Annotated[int, Path(ge=1, le=2**63 - 1)]
ContactIdQuery = Annotated[str | None, Query(max_length=64, pattern=r"^[A-Za-z0-9_-]+$")]
