"""What the API and the worker share: settings, SQL models, the job state machine, artifact storage.

Nothing here imports torch or the web framework, so both processes can depend on it cheaply.
"""
