"""HTTP: the FastAPI app (`/classify`, `/v1/models`, health, metrics), the page, and the edges below
it (connection limits and deadlines, the API-key gate)."""
