"""The GPU worker: a Celery app with one task, `worker.run_job(job_id)`, and the reconciler.

SQL is the truth and the broker only wakes workers (see docs/architecture.md): the task claims the job
with one conditional UPDATE, runs dora_core's training with callbacks that write progress to
SQL under a lease, stores the outputs, and writes the final status only while holding the lease.
"""
