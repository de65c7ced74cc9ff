"""The pure core: models, kernel, input parsing, proposal fields, publish rules, engine.

Imports only the standard library, msgspec and harvest_async.errors (an import-linter
contract in pyproject.toml holds it to that)."""
