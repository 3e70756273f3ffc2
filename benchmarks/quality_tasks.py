"""Synthetic tasks for benchmarks/quality.py: a question whose one right answer exact match can judge.

Every task is a function of a `random.Random` giving one (question, answer) pair; `build_split`
turns it into training rows and held-out prompts. Why synthetic: the answers are unambiguous,
the data is free and reproducible from a seed, and a 135M model starts near 0 % on them (wrong
format or wrong answer), so what training adds is measurable in a few dozen steps on a CPU.

The held-out prompts depend on the task only (not on the run's seed), so the base model is
judged once per task and every method, rank and seed on the same prompts; a run's seed draws its
training rows (never one of the held-out questions) and the adapter's initialisation. A short
system message replaces the chat template's default one, which keeps sequences short: that is
most of the cost of a step on a CPU.

Pure Python (no torch), so the generators can be tested on their own.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass

# Seeds of the held-out prompts: far from the run seeds (0, 1, 2, ...) so the streams differ.
EVAL_SEED = 10_000

MONTHS = ("January", "February", "March", "April", "May", "June", "July", "August", "September", "October",
          "November", "December")


@dataclass(frozen=True)
class Task:
    name: str
    system: str  # short: it is part of every sequence
    example: Callable[[random.Random], tuple[str, str]]  # rng -> (question, answer)
    max_new_tokens: int  # enough for the longest right answer and the end-of-turn token


def addition_example(rng: random.Random) -> tuple[str, str]:
    """Two 3-digit numbers: 'What is 123 + 456?' -> '579'."""
    a, b = rng.randint(100, 999), rng.randint(100, 999)
    return f"What is {a} + {b}?", str(a + b)


def sort_example(rng: random.Random) -> tuple[str, str]:
    """Five distinct 2-digit numbers in ascending order: '42 17 88 5 63' -> '5 17 42 63 88'."""
    numbers = rng.sample(range(10, 100), 5)
    return f"Sort: {' '.join(map(str, numbers))}", " ".join(map(str, sorted(numbers)))


def date_example(rng: random.Random) -> tuple[str, str]:
    """An ISO date written out: '2031-03-07' -> 'March 7, 2031' (a format plus a month-name lookup)."""
    year, month, day = rng.randint(1950, 2049), rng.randint(1, 12), rng.randint(1, 28)
    return f"{year:04d}-{month:02d}-{day:02d}", f"{MONTHS[month - 1]} {day}, {year}"


TASKS: dict[str, Task] = {
    "addition": Task("addition", "Answer with the number only.", addition_example, max_new_tokens=8),
    "sort": Task("sort", "Sort the numbers, ascending.", sort_example, max_new_tokens=16),
    "date": Task("date", "Write the date in words.", date_example, max_new_tokens=10),
}


@dataclass(frozen=True)
class Split:
    train: list[dict]  # chat rows: {"messages": [system, user, assistant]}
    eval_questions: list[str]
    eval_answers: list[str]


def chat_messages(task: Task, question: str, answer: str | None = None) -> list[dict]:
    """The conversation as trained (with the answer) or as prompted (without it)."""
    messages = [{"role": "system", "content": task.system}, {"role": "user", "content": question}]
    if answer is not None:
        messages.append({"role": "assistant", "content": answer})
    return messages


def held_out(task: Task, count: int) -> dict[str, str]:
    """`count` distinct questions and their answers, the same for every run seed."""
    return _distinct(task, random.Random(f"{task.name}-eval-{EVAL_SEED}"), count, exclude=set())


def build_split(task: Task, *, seed: int, train_rows: int, eval_prompts: int) -> Split:
    """Training rows drawn with `seed`, none of whose questions is a held-out one."""
    evaluation = held_out(task, eval_prompts)
    training = _distinct(task, random.Random(f"{task.name}-train-{seed}"), train_rows, exclude=set(evaluation))
    rows = [{"messages": chat_messages(task, question, answer)} for question, answer in training.items()]
    return Split(rows, list(evaluation), list(evaluation.values()))


def _distinct(task: Task, rng: random.Random, count: int, *, exclude: set[str]) -> dict[str, str]:
    pairs: dict[str, str] = {}
    for _ in range(100 * count + 1000):  # bounded: a task too small for `count` fails instead of spinning
        if len(pairs) == count:
            return pairs
        question, answer = task.example(rng)
        if question not in exclude:
            pairs.setdefault(question, answer)
    raise ValueError(f"task {task.name!r} could not draw {count} distinct questions")
