"""The journey language: models, validation and the pure logic workflows run on.

Nothing here does I/O at import or reads the clock (time is always an argument).
Workflows must import these modules inside workflow.unsafe.imports_passed_through():
the sandbox restricts zoneinfo.ZoneInfo, and re-importing the pydantic models per run
would be slow (tests/unit/test_dsl_sandbox.py checks this setup).
"""
