"""The sans-I/O core: schemas, validation, SSE parsing, errors. No Starlette, anyio, sockets or clocks here."""
