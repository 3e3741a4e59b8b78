"""Query parameters shared by list endpoints: bounded, so no input reaches the database unchecked."""

from typing import Annotated

from fastapi import Path, Query

Limit = Annotated[int, Query(ge=1, le=1000, description="Page size")]
Offset = Annotated[int, Query(ge=0, le=10_000_000, description="Rows to skip")]

RowId = Annotated[int, Path(ge=1, le=2**63 - 1, description="Numeric id")]
