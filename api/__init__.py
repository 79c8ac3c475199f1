"""The HTTP face: REST, WHIP, WHEP, health, metrics, OpenAPI, the app factory and CLI."""
