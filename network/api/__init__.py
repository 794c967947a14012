"""The HTTP API, its OpenAPI document, metrics, the login throttle and the console's files."""
