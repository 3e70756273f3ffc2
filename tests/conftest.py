"""Session-wide test settings that must hold before any test module is imported, and the test tiers.

TRITON_INTERPRET=1: the fused-kernel parity tests (tests/core/test_triton_kernels.py) run Triton
kernels on the CPU through Triton's interpreter. Triton reads the variable when its own
standard-library functions are defined, i.e. when `triton` is first imported, and some of
our dependencies import it early; so it is set here, first. There is no GPU in CI.

Tiers: each test is marked, at collection, with what it needs beyond this process (the markers are
registered in pyproject.toml): `postgres`, `redis`, `browser`, `processes` (it starts another
process: a subprocess, uvicorn, a Celery worker, torch.distributed ranks, moto's S3 server), `e2e`
(tests/e2e), and `slow` (in-process, but a minute of training or the real model). `make test-fast`
runs the tests that carry none of them; `make test` runs everything. The marks come from
  1. the fixtures a test uses, directly or through other fixtures (FIXTURE_NEEDS, by the file that
     defines the fixture, so two fixtures of one name in different files are told apart);
  2. the parameter of a parametrized fixture (PARAM_NEEDS: the API suite's PostgreSQL run, S3 storage);
  3. the test's own path (PATH_NEEDS: a directory, a module or one test), for tests that start a
     process or reach a service in their own code or through the product code they call;
  4. `postgresql_only` (a test of the API suite's PostgreSQL run only) -> postgres.
tests/test_tiers.py checks the result on known tests, and that every test whose own module code
names subprocess, Popen, multiprocessing, train_in_processes, psycopg, redis, chromium, ... is
covered by one of the tables (so a new one cannot slip into the fast tier unnoticed).
"""

import inspect
import os
from pathlib import Path

os.environ.setdefault("TRITON_INTERPRET", "1")

ROOT = Path(__file__).resolve().parents[1]
TIERS = ("postgres", "redis", "browser", "processes", "e2e", "slow")

# "file that defines the fixture::fixture name" -> what every test using the fixture needs
FIXTURE_NEEDS: dict[str, tuple[str, ...]] = {
    "tests/api/conftest.py::redis_url": ("redis",),
    "tests/api/conftest.py::s3_endpoint": ("processes",),  # moto's S3 server in a subprocess
    "tests/api/test_streams.py::two_apis": ("processes",),  # two `dora api` processes
    "tests/worker/test_database_outages.py::postgres": ("postgres",),
    "tests/worker/test_webhooks.py::sender": ("processes",),  # `dora webhooks` in a subprocess
    "tests/worker/test_tracking_jobs.py::mlflow_server": ("processes",),  # `mlflow server` in a subprocess
}

# "fixture key[parameter]" -> what the tests run with that parameter need
PARAM_NEEDS: dict[str, tuple[str, ...]] = {
    "tests/api/conftest.py::database_url[postgresql]": ("postgres",),
    "tests/api/test_storage.py::storage[s3]": ("processes",),  # requests s3_endpoint by name, at run time
    "tests/worker/test_webhooks.py::sender[redis]": ("redis",),
}

# a directory, a module ("tests/x/test_y.py") or a test ("tests/x/test_y.py::test_z", all its
# parameters) -> what its tests need
PATH_NEEDS: dict[str, tuple[str, ...]] = {
    # real `dora api` (uvicorn) and `dora worker` (Celery) processes
    "tests/e2e": ("e2e", "processes"),
    "tests/e2e/test_dashboard.py": ("browser",),
    "tests/e2e/test_playground.py": ("browser",),  # and a `dora serve` process
    "tests/e2e/test_evals_dashboard.py": ("browser",),  # and `dora serve` and `dora evals` processes
    "tests/e2e/test_broker_lost_queue.py": ("postgres", "redis"),
    "tests/e2e/test_broker_outages.py": ("postgres", "redis"),  # a redis-server of its own
    "tests/e2e/test_database_outage.py": ("postgres", "redis"),
    "tests/e2e/test_redis_postgres.py": ("postgres", "redis"),
    "tests/api/test_app.py::test_the_api_process_never_imports_torch_or_dora_core": ("processes",),
    # the wandb client runs its wandb-core service process
    "tests/worker/test_tracking_jobs.py::test_a_wandb_job_writes_its_config_every_step_and_the_samples": ("processes",),
    "tests/api/test_job_evals_api.py::test_the_job_pages_score_chart_series_come_from_eval_scores": ("processes",),
    "tests/api/test_app.py::test_cli_migrate_keys_create_and_api_refusal": ("processes",),
    "tests/api/test_app.py::test_dora_migrate_from_an_installed_wheel_in_another_directory": ("processes",),
    "tests/api/test_app.py::test_alembic_ini_in_the_checkout_still_migrates": ("processes",),
    "tests/api/test_outages.py::test_dora_api_starts_with_no_database_and_answers_503": ("processes",),
    "tests/api/test_ui.py::test_the_wheel_ships_every_dashboard_file_and_serves_them_when_installed": ("processes",),
    "tests/core/test_checkpoint_crash.py::test_sigkill_during_checkpoint_write_keeps_previous_checkpoint":
        ("processes",),
    # ranks through torch's elastic launcher (train_in_processes, `dora train --nproc 2`)
    "tests/core/test_distributed.py::test_two_processes_give_the_single_process_run": ("processes",),
    "tests/core/test_distributed.py::test_a_stop_on_rank_0_ends_every_rank_and_runs_resume_across_process_counts":
        ("processes",),
    "tests/core/test_distributed.py::test_a_sigkilled_two_process_run_resumes_in_one_process": ("processes",),
    "tests/core/test_distributed.py::test_sigint_to_dora_train_nproc_2_ends_every_rank": ("processes",),
    "tests/core/test_distributed.py::test_a_dataset_mistake_in_the_ranks_exits_2_with_its_message": ("processes",),
    "tests/core/test_distributed.py::test_an_nf4_base_sharded_by_fsdp_trains_as_the_replicated_one": ("processes",),
    "tests/core/test_distributed.py::test_nf4_weights_fsdp_cannot_split_evenly_fail_with_the_ranks_own_error":
        ("processes",),
    "tests/core/test_formats.py::test_package_stays_free_of_torch_and_transformers": ("processes",),
    "tests/core/test_gguf_import.py::test_the_packaged_gguf_is_found_without_importing_its_package": ("processes",),
    "tests/core/test_import_noise.py::test_importing_the_training_stack_prints_no_torchao_noise_and_keeps_other_warnings":
        ("processes",),
    "tests/core/test_saved_memory.py::test_benchmark_prints_one_json_line_per_configuration": ("processes",),
    "tests/core/test_train_cli.py::test_json_config_trains_in_a_real_dora_process": ("processes",),
    "tests/test_readme_commands.py::test_train_locally_commands_run_as_written_in_a_fresh_clone": ("processes",),
    "tests/worker/test_celery_app.py::test_dora_lists_the_worker_commands": ("processes",),
    "tests/worker/test_deploy_files.py::test_docker_compose_config_passes": ("processes",),
    # a 2-GPU job runs as two CPU ranks
    "tests/worker/test_multi_gpu_jobs.py::test_a_two_gpu_job_trains_as_two_ranks_and_gives_the_one_gpu_jobs_result":
        ("processes",),
    "tests/worker/test_multi_gpu_jobs.py::test_a_failing_rank_fails_the_job_with_its_own_readable_error_and_no_retry":
        ("processes",),
    "tests/worker/test_multi_gpu_jobs.py::test_cancel_ends_every_rank_within_a_step": ("processes",),
    "tests/worker/test_reconciler.py::test_a_broker_that_lost_its_queue_gets_every_queued_job_republished_at_the_next_pass":
        ("redis",),
    "tests/worker/test_webhooks.py::test_the_sender_is_a_thread_pool_on_its_own_queue": ("processes",),
    # a real `dora serve` (uvicorn, the models loaded) spoken to over HTTP
    "tests/serve/test_serve_process.py": ("processes",),
    "tests/serve/test_benchmark.py": ("processes",),  # benchmarks/serve.py as a script
    "tests/worker/test_eval_runs.py": ("processes",),  # `dora serve` and `dora evals` processes
    "tests/graders/test_sandbox.py": ("processes",),  # the python grader's sandboxed processes
    "tests/core/test_grpo.py::test_a_python_grader_rewards_through_the_sandbox_the_worker_lends": ("processes",),
    # slow: in this process, but over 10 s each on 2 busy cores (the real model: its first use in a
    # checkout also converts it, about 50 s)
    "tests/e2e/test_real_model.py": ("slow",),
    "tests/core/test_gguf_import.py::test_the_real_gguf_converts_once_into_a_bf16_folder": ("slow",),
    "tests/core/test_gguf_import.py::test_the_converted_folder_computes_what_the_gguf_computes": ("slow",),
    "tests/core/test_gguf_export.py::test_the_real_smollm2_round_trips_in_f16": ("slow",),
    "tests/core/test_serving_real_model.py": ("slow",),
    "tests/core/test_samples.py::test_samples_change_nothing_about_training_and_are_deterministic": ("slow",),
    "tests/core/test_qdora.py::test_a_stopped_qdora_run_resumes_to_the_uninterrupted_adapter": ("slow",),
    "tests/core/test_dora_dropout.py::test_dora_dropout_backward_passes_gradcheck": ("slow",),
    "tests/core/test_grpo.py::test_a_short_run_reports_rewards_keeps_one_base_copy_and_resumes": ("slow",),
    "tests/core/test_grpo.py::test_the_reward_goes_up_on_a_learnable_task": ("slow",),
}


def _fixture_keys(item) -> list[tuple[str, object]]:
    """("file::name", the test's parameter of it or None) for every fixture the test uses."""
    info = getattr(item, "_fixtureinfo", None)
    params = getattr(getattr(item, "callspec", None), "params", {})
    keys = []
    for name in getattr(item, "fixturenames", ()):
        definitions = info.name2fixturedefs.get(name) if info else None
        if not definitions:
            continue  # a parametrize argument, not a fixture
        source = Path(inspect.getfile(definitions[-1].func)).resolve()
        where = source.relative_to(ROOT).as_posix() if source.is_relative_to(ROOT) else str(source)
        keys.append((f"{where}::{name}", params.get(name)))
    return keys


def _path_keys(item) -> list[str]:
    """The test's directories, its module and "module::test" (class and parameters left out)."""
    module, *rest = item.nodeid.split("[", 1)[0].split("::")
    keys = [parent.as_posix() for parent in reversed(Path(module).parents) if parent != Path(".")]
    keys.append(module)
    if rest:
        keys.append(f"{module}::{rest[-1]}")
    return keys


def tier_needs(item) -> set[str]:
    """What the collected test `item` needs beyond this process (a subset of TIERS)."""
    needs: set[str] = set()
    for key, param in _fixture_keys(item):
        needs.update(FIXTURE_NEEDS.get(key, ()))
        needs.update(PARAM_NEEDS.get(f"{key}[{param}]", ()) if param is not None else ())
    for key in _path_keys(item):
        needs.update(PATH_NEEDS.get(key, ()))
    if item.get_closest_marker("postgresql_only"):
        needs.add("postgres")  # the API suite's tests that exist for its PostgreSQL run only
    return needs


def pytest_collection_modifyitems(config, items):
    for item in items:
        for name in sorted(tier_needs(item)):
            if item.get_closest_marker(name) is None:
                item.add_marker(name)
