"""`dora train CONFIG --out DIR`: trains from YAML and JSON, prints progress, fails cleanly, resumes."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from dora_cli.main import main
from dora_cli.progress import BarProgress, LineProgress, make_progress
from tests.support.training_helpers import dataset_rows, write_jsonl

OUTPUT_NAMES = ("adapter", "merged", "metrics.jsonl", "manifest.json")


@pytest.fixture(autouse=True)
def offline_hub(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


@pytest.fixture
def project(tmp_path: Path, tiny_model_dir: Path) -> Path:
    """A folder with data/train.jsonl; configs written here name it relative to themselves."""
    (tmp_path / "data").mkdir()
    write_jsonl(tmp_path / "data" / "train.jsonl", dataset_rows("chat"))
    return tmp_path


def _settings(model_dir: Path, **training) -> dict:
    return {"base_model": str(model_dir), "train_file": "data/train.jsonl",
            "adapter": {"method": "dora", "rank": 4, "alpha": 8},
            "training": {"max_steps": 6, "checkpoint_interval": 3, "micro_batch_size": 4, "max_seq_len": 64,
                         "learning_rate": 1e-2, **training}}


def _write_yaml(folder: Path, settings: dict) -> Path:
    path = folder / "run.yaml"
    path.write_text(yaml.safe_dump(settings))
    return path


def _step_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("step ")]


def _metric_steps(out: Path) -> list[int]:
    return [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]


def _adapter(out: Path) -> dict[str, torch.Tensor]:
    return load_file(str(out / "adapter" / "adapter_model.safetensors"))


def test_yaml_config_trains_prints_step_lines_and_rerun_resumes_from_last_checkpoint(project, tiny_model_dir,
                                                                                      capsys):
    config, out = _write_yaml(project, _settings(tiny_model_dir)), project / "out"
    argv = ["train", str(config), "--out", str(out), "--device", "cpu", "--log-every", "2"]

    assert main(argv) == 0
    first = capsys.readouterr()
    assert all((out / name).exists() for name in OUTPUT_NAMES)
    # off a terminal: the first step, every 2nd and the last, one line each
    assert [line.split()[1] for line in _step_lines(first.out)] == ["1/6", "2/6", "4/6", "6/6"]
    assert "loss " in _step_lines(first.out)[0] and " lr " in _step_lines(first.out)[0]
    assert "checkpoint saved at step 3" in first.out
    assert "status: completed (step 6/6)" in first.out
    assert "final metrics: steps 6  loss " in first.out
    assert str(out / "adapter") in first.out and str(out / "manifest.json") in first.out
    assert "Traceback" not in first.err
    trained = _adapter(out)
    written = _output_files(out)

    # the same command again: the run ends with a checkpoint at its last step, so it resumes
    # there, trains nothing more and leaves the outputs as they were: not one file rewritten
    assert main(argv) == 0
    second = capsys.readouterr().out
    assert "already holds a finished run" in second
    assert "resumed from checkpoint at step 6" in second
    assert _step_lines(second) == []
    assert ("status: completed (already complete at step 6/6; nothing to train "
            "(use --no-resume --overwrite to start over))") in second
    assert "resumed from step" not in second
    assert _metric_steps(out) == [1, 2, 3, 4, 5, 6]
    assert _output_files(out) == written
    assert str(out / "adapter") in second and str(out / "merged") in second  # still listed as the run's outputs
    for name, tensor in _adapter(out).items():
        torch.testing.assert_close(tensor, trained[name], atol=0, rtol=0)

    # asking for one more output (gguf_type or outputs changed): that run's outputs are written again
    config.write_text(yaml.safe_dump({**_settings(tiny_model_dir), "outputs": ["adapter"]}))
    assert main(argv) == 0
    assert "status: completed (already complete at step 6/6" in capsys.readouterr().out
    assert _output_files(out)["adapter/adapter_model.safetensors"] != written["adapter/adapter_model.safetensors"]
    assert json.loads((out / "manifest.json").read_text())["outputs"] == ["adapter", "metrics"]


def _output_files(out: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every file of the outputs: a rewritten output (a new folder renamed in) changes them."""
    return {path.relative_to(out).as_posix(): (path.stat().st_ino, path.stat().st_mtime_ns)
            for folder in ("adapter", "merged") for path in sorted((out / folder).rglob("*")) if path.is_file()} | {
        "manifest.json": ((out / "manifest.json").stat().st_ino, (out / "manifest.json").stat().st_mtime_ns)}


def test_changed_config_in_the_same_folder_is_refused(project, tiny_model_dir, capsys):
    out = project / "out"
    config = _write_yaml(project, _settings(tiny_model_dir))
    assert main(["train", str(config), "--out", str(out), "--device", "cpu"]) == 0
    capsys.readouterr()
    changed = _settings(tiny_model_dir)
    changed["adapter"]["rank"] = 8
    assert main(["train", str(_write_yaml(project, changed)), "--out", str(out), "--device", "cpu"]) == 2
    error = capsys.readouterr().err
    assert "another config or dataset" in error and "Traceback" not in error


def test_json_config_trains_in_a_real_dora_process(project, tiny_model_dir):
    config, out = project / "run.json", project / "out"
    config.write_text(json.dumps(_settings(tiny_model_dir, max_steps=3, checkpoint_interval=2)))
    dora = Path(sys.executable).with_name("dora")
    done = subprocess.run([str(dora), "train", str(config), "--out", str(out), "--device", "cpu"],
                          capture_output=True, text=True, timeout=120, cwd=project,
                          env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert done.returncode == 0, done.stderr
    assert all((out / name).exists() for name in OUTPUT_NAMES)
    assert [line.split()[1] for line in _step_lines(done.stdout)] == ["1/3", "3/3"]
    assert "status: completed (step 3/3)" in done.stdout
    assert "Traceback" not in done.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "completed" and manifest["config"]["train_file"] == str(project / "data/train.jsonl")


@pytest.mark.parametrize(("change", "field"), [
    ({"training": {"learnig_rate": 1e-3}}, "training.learnig_rate"),
    ({"training": {"micro_batch_size": 0}}, "training.micro_batch_size"),
    ({"adapter": {"rank": "four"}}, "adapter.rank"),
    ({"outputs": ["adapter", "onnx"]}, "outputs.1"),
])
def test_a_bad_setting_exits_2_naming_the_field(project, tiny_model_dir, capsys, change, field):
    config = _write_yaml(project, {**_settings(tiny_model_dir), **change})
    assert main(["train", str(config), "--out", str(project / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: invalid config") and f"'{field}'" in err and "Traceback" not in err
    assert not (project / "out").exists()


@pytest.mark.parametrize(("text", "expected"), [
    ("train_file: data/train.jsonl\n", "base_model"),  # a required setting missing
    ("base_model: m\ntrain_file: [unclosed\n", "not valid YAML"),
])
def test_a_broken_config_file_exits_2(project, capsys, text, expected):
    config = project / "run.yaml"
    config.write_text(text)
    assert main(["train", str(config), "--out", str(project / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and expected in err


def test_a_yaml_error_names_the_config_file_and_where_in_it(tmp_path, capsys):
    config = tmp_path / "run.yaml"
    config.write_text("base_model: m\ntrain_file: [unclosed\n")
    assert main(["train", str(config), "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err
    assert f'in "{config}", line 2, column 13' in err and "<unicode string>" not in err, err


def test_an_invalid_dataset_exits_2_listing_each_line_before_training(project, tiny_model_dir, capsys):
    rows = [json.dumps(dataset_rows("chat")[0]), '{"messages": [', json.dumps({"messages": [{"role": "robot",
                                                                                            "content": "hi"}]})]
    (project / "data" / "train.jsonl").write_text("\n".join(rows) + "\n")
    config = _write_yaml(project, _settings(tiny_model_dir))
    assert main(["train", str(config), "--out", str(project / "out")]) == 2
    err = capsys.readouterr().err
    assert "error: invalid dataset" in err and "2 problem(s)" in err
    lines = err.splitlines()
    assert any(line.strip().startswith("line 2: invalid JSON") for line in lines)
    assert any(line.strip().startswith("line 3:") and "robot" in line for line in lines)
    assert not (project / "out" / "checkpoints").exists() and "Traceback" not in err


def test_a_validation_split_that_leaves_no_training_rows_exits_2_naming_the_setting(project, tiny_model_dir, capsys):
    (project / "data" / "train.jsonl").write_text(json.dumps(dataset_rows("chat")[0]) + "\n")  # one row
    config = _write_yaml(project, _settings(tiny_model_dir, validation_split=0.5))
    assert main(["train", str(config), "--out", str(project / "out")]) == 2
    err = capsys.readouterr().err
    assert f"invalid config {config}: setting 'training.validation_split'" in err and "Traceback" not in err, err


def test_a_missing_model_exits_2(project, capsys):
    config = _write_yaml(project, {**_settings(project), "base_model": "./no-such-model"})
    assert main(["train", str(config), "--out", str(project / "out")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and "no-such-model" in err and "Traceback" not in err


@pytest.mark.parametrize(("base_model", "hub", "reason"), [
    ("modle", "offline", "as a hub id it is not in the hub cache and cannot be downloaded: offline mode "
                         "(HF_HUB_OFFLINE is set)"),
    ("modle", "unreachable", "as a hub id it is not in the hub cache and cannot be downloaded: the hub "
                             "(http://127.0.0.1:9) is unreachable"),
    ("./modle", "unreachable", None),  # a path: the hub is not asked
    ("modle.gguf", "offline", None),
])
def test_a_mistyped_base_model_fails_in_seconds_naming_the_setting_and_the_path_beside_the_config(
        project, capsys, monkeypatch, base_model, hub, reason):
    """No minute of hub retries: an offline or unreachable hub (one quick request) ends it at once,
    and a relative base_model is looked for beside the config, not in the working directory."""
    from huggingface_hub import constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", hub == "offline")
    monkeypatch.setattr(constants, "ENDPOINT", "http://127.0.0.1:9")  # nothing listens: refused at once
    (project / "runs").mkdir()
    config = _write_yaml(project / "runs", {**_settings(project), "base_model": base_model,
                                            "train_file": "../data/train.jsonl"})
    monkeypatch.chdir(project / "data")
    started = time.monotonic()
    assert main(["train", str(config), "--out", str(project / "out")]) == 2
    assert time.monotonic() - started < 10
    err = capsys.readouterr().err
    tried = project / "runs" / base_model.removeprefix("./")
    what = "GGUF file" if base_model.endswith(".gguf") else "local folder"
    assert err.startswith(f"error: {config}: base_model {base_model!r}: no such {what} ({tried})"), err
    assert reason in err if reason else "hub" not in err
    assert "Retry" not in err and "tokenizer" not in err and not (project / "out").exists()


def test_ctrl_c_exits_130_keeps_checkpoints_and_the_same_command_resumes(project, tiny_model_dir, capsys,
                                                                          monkeypatch):
    config, out = _write_yaml(project, _settings(tiny_model_dir)), project / "out"
    argv = ["train", str(config), "--out", str(out), "--log-every", "1"]
    real_on_step = LineProgress.on_step

    def interrupt_at_step_5(self, metrics):
        real_on_step(self, metrics)
        if metrics["step"] == 5:
            raise KeyboardInterrupt

    monkeypatch.setattr(LineProgress, "on_step", interrupt_at_step_5)
    assert main(argv) == 130
    err = capsys.readouterr().err
    assert "interrupted" in err and "step 3" in err and "run the same command again to resume" in err
    assert (out / "checkpoints" / "step-000003").is_dir() and not (out / "adapter").exists()

    monkeypatch.setattr(LineProgress, "on_step", real_on_step)
    assert main(argv) == 0
    resumed = capsys.readouterr().out
    assert "resumed from checkpoint at step 3" in resumed
    assert [line.split()[1] for line in _step_lines(resumed)] == ["4/6", "5/6", "6/6"]
    assert "status: completed (step 6/6, resumed from step 3)" in resumed
    assert _metric_steps(out) == [1, 2, 3, 4, 5, 6]


@pytest.mark.parametrize(("status", "step", "resumed_from", "expected"), [
    ("completed", 7, None, "status: completed (step 7/7)"),
    ("completed", 7, 3, "status: completed (step 7/7, resumed from step 3)"),
    ("completed", 7, 7, "status: completed (already complete at step 7/7; nothing to train "
                        "(use --no-resume --overwrite to start over))"),
    ("early_stopped", 4, 4, "status: early_stopped (already stopped early at step 4/7; nothing to train "
                            "(use --no-resume --overwrite to start over))"),
    ("stopped", 3, 3, "status: stopped (step 3/7, resumed from step 3)"),
])
def test_the_status_line_says_when_a_resumed_run_had_nothing_left_to_train(capsys, status, step, resumed_from,
                                                                            expected):
    from dora_cli.train_commands import _print_result
    from dora_core.training.run import RunResult

    _print_result(RunResult(status, step, 7, resumed_from, {"steps": step}))
    assert capsys.readouterr().out.splitlines()[0] == expected


def test_no_resume_refuses_an_earlier_run_and_overwrite_says_what_it_deletes(project, tiny_model_dir, capsys):
    config, out = _write_yaml(project, _settings(tiny_model_dir, max_steps=2)), project / "out"
    (out / "checkpoints" / "step-000003").mkdir(parents=True)  # an earlier run's leftovers
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 9.0}\n')
    base = ["train", str(config), "--out", str(out)]

    assert main([*base, "--no-resume"]) == 2
    assert "already holds an earlier run (checkpoints, metrics.jsonl)" in capsys.readouterr().err
    assert main([*base, "--overwrite"]) == 2
    assert "--overwrite only applies with --no-resume" in capsys.readouterr().err
    assert (out / "checkpoints" / "step-000003").is_dir()  # nothing was deleted

    assert main([*base, "--no-resume", "--overwrite"]) == 0
    printed = capsys.readouterr().out
    assert "deleted the earlier run" in printed and "resumed" not in printed
    assert "status: completed (step 2/2)" in printed
    assert not (out / "checkpoints" / "step-000003").exists() and _metric_steps(out) == [1, 2]


class _Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_progress_is_a_bar_on_a_terminal_and_lines_elsewhere():
    from rich.console import Console

    assert isinstance(make_progress(_Terminal()), BarProgress)
    assert isinstance(make_progress(io.StringIO()), LineProgress)
    screen = io.StringIO()
    bar = BarProgress(screen, console=Console(file=screen, force_terminal=True, width=140))
    bar.on_resume(step=2)
    bar.on_start(total_steps=6, start_step=2, report={"train": {"rows": 16}})
    bar.on_step({"step": 3, "loss": 1.23456, "lr": 1e-4})
    bar.on_event("out of memory: micro-batch 4 -> 2", level="warning")
    bar.close()
    shown = screen.getvalue()
    assert "3/6" in shown and "loss 1.2346" in shown and "lr 1.00e-04" in shown and "eta" in shown
    assert "resumed from checkpoint at step 2" in shown and "warning: out of memory" in shown


def test_evaluation_lines_show_whatever_the_run_measured():
    """SFT's loss and token accuracy, DPO's rewards (no token accuracy), and a checkpoint's measurement of
    the whole validation set (full_eval_*): one line each, never a KeyError in the middle of a run."""
    from dora_cli.progress import format_evaluation

    assert format_evaluation({"step": 4, "eval_loss": 1.23456, "eval_token_accuracy": 0.5}) == \
        "eval step 4  eval_loss 1.2346  eval_token_accuracy 0.5000"
    assert format_evaluation({"step": 2, "eval_loss": 0.69, "eval_rewards/margins": 0.1}) == \
        "eval step 2  eval_loss 0.6900  eval_rewards/margins 0.1000"
    assert format_evaluation({"step": 6, "full_eval_loss": 7.0, "full_eval_token_accuracy": 0.0}) == \
        "full eval step 6  full_eval_loss 7.0000  full_eval_token_accuracy 0.0000"
