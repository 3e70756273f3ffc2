"""Errors a client caused: `param` names the request field, so the server answers a 4xx naming it."""

from __future__ import annotations


class RequestError(ValueError):
    """A request the engine cannot run as given (a bad parameter, a prompt too long, a template failure)."""

    def __init__(self, param: str, message: str) -> None:
        super().__init__(f"{param}: {message}")
        self.param = param
        self.message = message


class UnsupportedModelError(TypeError):
    """The base model cannot be served by this engine (e.g. its KV cache is not plain dynamic layers)."""
