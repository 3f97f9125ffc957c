"""The HTTP gateway (FastAPI): `create_app` is its composition root."""

from service.api.app import create_app

__all__ = ["create_app"]
