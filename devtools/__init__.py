"""Development tools shared by tests, benchmarks and load tests: launchers of the real parts (Apache Kafka,
PostgreSQL, Triton, Prometheus), Kafka helpers, loopback HTTP servers and the media factory.

Never imported by the product (`service/`); nothing here imports `tests`.
"""
