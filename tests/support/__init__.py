"""Helpers the test packages share, by topic; conftest.py files define fixtures only and import from here.

- services.py: PostgreSQL and Redis of the test environment, free ports, a uvicorn server in a thread
- api_client.py: the API seen by one tenant (Tenant, make_tenant), FakeWorker, the recording app
- jobs.py: the arithmetic dataset, a DoRA `method` block, wait_for
- worker_service.py: the worker suite's Service (one tenant's client plus the rows the worker writes)
- artifacts.py: finishing a job with stored artifact files
- streaming.py: bounded-memory download checks
- stack.py: real `dora api` / `dora worker` processes (the e2e stack)
"""
