"""Pieces the leave-one-case-out benchmarks share: fold processes and result files."""

from __future__ import annotations

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
