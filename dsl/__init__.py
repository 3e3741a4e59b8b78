"""The journey language: models, validation and the pure logic workflows run on.

Nothing here does I/O or reads the clock, so workflows can import it in the sandbox.
"""
