"""Alembic's scripts for dora-tuner's database (env.py, versions/): the only way the schema changes.

A package so it ships in the wheel next to `store`; store/migrate.py finds it there, beside the
`store` package it belongs to, and builds the Alembic config in code (`dora migrate`).
"""
