"""Every shell block of README.md works as written, from a fresh shell, against a server.

The blocks run in order in one bash process, as a reader pastes them into one terminal: what a
block exports (an API key) is there for the next. The shell starts without anything leaddist
reads (no WEBHOOK_SECRET, no API key, no DEBUG), from the checkout. The server runs as `make
run` serves it, with the demo webhook secret, on the seeded test database. Two things differ
from a reader's machine, and only because tests share it: the port (README's 127.0.0.1:8000
becomes the server's, and PORT is set to it, as `PORT=… make run` would) and DATABASE_URL (the
test database stands in for the embedded one).

A block that cannot run here is marked on the line before its fence:
``<!-- readme-test: skip (why) -->``.
"""

from __future__ import annotations

import os
import re
import subprocess
import textwrap
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings

from leaddist.tests.asgi_server import database_url_for_tests
from webhooks.signing import DEMO_WEBHOOK_SECRET

README = Path(settings.BASE_DIR) / "README.md"
SKIP = "<!-- readme-test: skip"
FENCE = re.compile(r"^(?P<indent>\s*)```sh\s*$")


@dataclass(frozen=True)
class Block:
    line: int
    text: str
    skipped: bool


def shell_blocks(markdown: str) -> list[Block]:
    """The ```sh blocks, dedented, each with whether the line before it skips it."""
    lines = markdown.splitlines()
    blocks = []
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        before = next((line for line in reversed(lines[:index]) if line.strip()), "")
        end = index + 1
        while lines[end].strip() != "```":
            end += 1
        body = textwrap.dedent("\n".join(lines[index + 1 : end]))
        blocks.append(Block(index + 1, body, before.strip().startswith(SKIP)))
        index = end + 1
    return blocks


def test_the_readme_has_runnable_shell_blocks_and_marks_the_others():
    blocks = shell_blocks(README.read_text())

    assert [b.skipped for b in blocks].count(False) >= 4
    assert any("make run" in b.text for b in blocks if b.skipped)


@pytest.mark.django_db(transaction=True)
def test_every_runnable_shell_block_of_the_readme_works_as_written(seeded_tx, asgi_server_factory):
    server = asgi_server_factory(WEBHOOK_SECRET=DEMO_WEBHOOK_SECRET)
    port = server.url.rsplit(":", 1)[1]
    blocks = [b for b in shell_blocks(README.read_text()) if not b.skipped]
    script = "set -e\n" + "".join(
        f"echo '@@ block {n} @@'\n{b.text.replace('127.0.0.1:8000', f'127.0.0.1:{port}')}\n"
        for n, b in enumerate(blocks)
    )
    script += "echo '@@ end @@'\n"
    fresh_shell = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "HOME": os.environ.get("HOME", "/tmp"),
        "LANG": "C.UTF-8",
        "PORT": port,
        "DATABASE_URL": database_url_for_tests("leaddist-readme-shell"),
    }

    result = subprocess.run(
        ["bash", "-c", script],
        cwd=settings.BASE_DIR,
        env=fresh_shell,
        capture_output=True,
        text=True,
        timeout=120,
    )

    output = result.stdout
    assert result.returncode == 0, f"{output}\n{result.stderr}"
    assert "@@ end @@" in output
    outputs = {
        blocks[n].line: part for n, part in enumerate(re.split(r"@@ block \d+ @@\n", output)[1:])
    }
    for line, part in outputs.items():
        assert '"error"' not in part, f"README.md line {line}:\n{part}"
        assert not re.search(r"^HTTP/\S+ [45]\d\d", part, re.M), f"README.md line {line}:\n{part}"
    answers = "\n".join(outputs.values())
    assert re.search(r"^HTTP/\S+ 201", answers, re.M), answers  # the lead
    assert answers.count('"status": "applied"') == 2, answers  # the webhook, reset_quotas
