"""serve: the inference server (`dora serve`), one base model held once, adapters applied unmerged.

It imports `store` (settings, the registry of servers, artifact storage) and `dora_core` (the
engine, dora_core/serving); the API forwards completions to it over HTTP with a shared secret.
"""
