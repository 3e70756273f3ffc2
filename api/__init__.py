"""The HTTP API (FastAPI). Imports store/ and the torch-free dora_formats only: never torch, never dora_core."""
