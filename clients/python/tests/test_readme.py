"""The README's promises, checked: its quick start is a program that runs
as printed against a real server (only the key and the address are filled
in) and stays under ten lines, and the worker it shows, like the example
worker the worker tests serve jobs with, stays under twenty."""

from __future__ import annotations

import re
from pathlib import Path

from conftest import REPO

README = REPO / "clients" / "python" / "README.md"
EXAMPLE_WORKER = REPO / "examples" / "pillow_worker.py"


def _python_block_after(heading: str) -> str:
    text = README.read_text()
    at = text.find(heading)
    assert at >= 0, f"{heading!r} not in {README}"
    found = re.search(r"```python\n(.*?)```", text[at:], re.S)
    assert found, f"no python block after {heading!r}"
    return found.group(1)


def _code_lines(source: str) -> list[str]:
    """Lines that do something: not blank, not only a comment, not the
    module's docstring."""
    source = re.sub(r'\A\s*(#![^\n]*\n)?\s*"""(.*?)"""', "", source, flags=re.S)
    return [line for line in source.splitlines() if line.strip() and not line.strip().startswith("#")]


def test_the_quick_start_runs_as_printed(server, tmp_path, monkeypatch) -> None:
    block = _python_block_after("## Quick start")
    assert len(_code_lines(block)) < 10, block
    assert '"sk_..."' in block and '"http://127.0.0.1:8080"' in block, "placeholders moved: update this test"
    with server.new_user("readme") as user:
        key = user.api_key
    program = block.replace('"sk_..."', repr(key)).replace('"http://127.0.0.1:8080"', repr(server.url))
    monkeypatch.chdir(tmp_path)
    exec(compile(program, str(README), "exec"), {})
    picture = tmp_path / "fox.png"
    assert picture.is_file() and picture.stat().st_size > 0


def test_a_worker_fits_in_twenty_lines() -> None:
    shown = _python_block_after("## Serving a model: the worker SDK")
    assert len(_code_lines(shown)) < 20, shown
    assert len(_code_lines(EXAMPLE_WORKER.read_text())) < 20


def test_the_line_count_skips_comments_and_the_docstring() -> None:
    sample = '#!/usr/bin/env python3\n"""Doc\n\nmore"""\n\nimport os  # why\n# a comment\n\nprint(os.name)\n'
    assert _code_lines(sample) == ["import os  # why", "print(os.name)"]
