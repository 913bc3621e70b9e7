"""The HTTP API: ``create_app`` builds the FastAPI application (see ``app.api.app``)."""
