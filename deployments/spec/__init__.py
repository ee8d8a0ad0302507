"""OpenAPI ingestion: parse a spec into an operation index, match concrete calls onto it, cache it."""
