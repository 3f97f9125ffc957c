"""Open-loop HTTP load generator for the dfguard gateway (`POST /v1/score`).

    python -m loadtest --start-server --profile spike --rate 2 --duration 30 --out OUT

Modules: `mix` (the media mix, generated once into a cache), `generator` (arrival schedule, the asyncio
sender, the `/metrics` sampler and the `dfguard serve` process), `report` (summary JSON and the PNG).
"""
