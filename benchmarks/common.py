"""Pieces the leave-one-case-out benchmarks share: fold processes and result files."""

from __future__ import annotations

import argparse
import json
import multiprocessing
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any


def run_folds(
    function: Callable[..., dict[str, Any]],
    fold_arguments: Sequence[tuple],
    *,
    jobs: int,
    **shared: Any,
) -> Iterator[dict[str, Any]]:
    """Run ``function(*arguments, **shared)`` for each fold in ``jobs`` spawned processes.

    Spawned processes import the project afresh, so each fold trains with its own torch thread
    settings. Yields the fold records in the order of ``fold_arguments``.
    """
    context = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=jobs, mp_context=context) as pool:
        futures = [pool.submit(function, *arguments, **shared) for arguments in fold_arguments]
        for future in futures:
            yield future.result()


def write_result_files(out_dir: Path, name: str, document: dict[str, Any], markdown: str) -> Path:
    """Write ``NAME.json`` and ``NAME.md`` into ``out_dir`` and return the Markdown path."""
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / f"{name}.json").write_text(json.dumps(document, indent=2) + "\n")
    markdown_path = out_dir / f"{name}.md"
    markdown_path.write_text(markdown)
    return markdown_path


def budget_text(document: dict[str, Any]) -> str:
    """Return a results document's training budget per fold as text: steps or minutes."""
    if document.get("steps"):
        return f"{document['steps']} optimiser steps"
    return f"{document['minutes']:g} min of wall time"


def add_fold_arguments(parser: argparse.ArgumentParser, *, work: Path, out: Path) -> None:
    """Add the options every leave-one-case-out benchmark takes: step budget, jobs, threads, data, folders."""
    parser.add_argument(
        "--steps", type=int, default=None, help="train each fold this many steps instead of --minutes"
    )
    parser.add_argument("--jobs", type=int, default=2, help="folds trained at a time")
    parser.add_argument("--threads", type=int, default=1, help="torch and onnxruntime threads per fold")
    parser.add_argument("--cases", type=Path, default=None, help="labelled cases (default: the shared data)")
    parser.add_argument("--work", type=Path, default=work, help="fold folder")
    parser.add_argument("--out", type=Path, default=out, help="results folder")
    parser.add_argument("--seed", type=int, default=0)


def check_fold_arguments(parser: argparse.ArgumentParser, arguments: argparse.Namespace) -> None:
    """Exit through ``parser.error`` when the budget, jobs or threads are out of range."""
    if arguments.minutes <= 0 or arguments.jobs < 1 or arguments.threads < 1:
        parser.error("--minutes must be > 0, --jobs and --threads >= 1")
    if arguments.steps is not None and arguments.steps < 1:
        parser.error(f"--steps must be >= 1, got {arguments.steps}")
