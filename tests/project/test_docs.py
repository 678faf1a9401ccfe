"""Every command line and every ``key=value`` quoted in README.md and docs/ composes through
Hydra as the CLI would compose it (nothing runs): a documented key that does not exist, or a
command that is gone, fails here."""

from __future__ import annotations

import importlib
import re
import shlex
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra

from bloodcells.core.hydra import CONFIG_DIR, PROJECT_ROOT

DOCS = [PROJECT_ROOT / "README.md", *sorted((PROJECT_ROOT / "docs").glob("*.md"))]
HYDRA_COMMANDS = {p.stem for p in Path(CONFIG_DIR).glob("*.yaml")}
ARGPARSE_COMMANDS = {"summarize", "checkpoints"}


def command_lines(text: str) -> list[str]:
    """``python -m bloodcells.X ...`` lines of fenced blocks (continuations joined, comments
    dropped) and of inline code spans."""
    lines = []
    for block in re.findall(r"```(?:bash)?\n(.*?)```", text, flags=re.S):
        for line in block.replace("\\\n", " ").splitlines():
            line = line.split(" #")[0].strip()
            if line.startswith("python -m bloodcells."):
                lines.append(line)
    lines += [span for span in re.findall(r"`([^`\n]+)`", text) if span.startswith("python -m bloodcells.")]
    return lines


def documented_keys(text: str) -> list[str]:
    """Inline ``key.path=value`` spans in the prose (not inside command lines)."""
    prose = re.sub(r"```.*?```", "", text, flags=re.S)
    return [s for s in re.findall(r"`([^`\n ]+)`", prose) if re.fullmatch(r"[a-z_]+(\.[a-z_]+)+=\S+", s)]


def first_choice(override: str) -> str:
    """A sweep override (``aug=a,b``) as its first value: compose takes one config."""
    key, _, value = override.partition("=")
    if "," in value and not value.startswith(("[", "{")) and "(" not in value:
        value = value.split(",")[0]
    return f"{key}={value}"


def compose_ok(config_name: str, overrides: list[str]) -> None:
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        compose(config_name, overrides, return_hydra_config=True)


CASES = [(doc.name, line) for doc in DOCS for line in command_lines(doc.read_text())]


def test_the_docs_quote_commands():
    assert len(CASES) >= 30 and {"README.md", "training.md", "inference.md"} <= {d for d, _ in CASES}


@pytest.mark.parametrize("doc, line", CASES)
def test_every_documented_command_composes(doc, line):
    words = shlex.split(line)
    command = words[2].split(".", 1)[1]
    importlib.import_module(f"bloodcells.{command}")  # the entry point exists
    if command in ARGPARSE_COMMANDS:
        return
    assert command in HYDRA_COMMANDS, f"{doc}: {line}"
    overrides = [first_choice(w) for w in words[3:] if not w.startswith("-")]
    compose_ok(command, overrides)


KEYS = [(doc.name, key) for doc in DOCS for key in documented_keys(doc.read_text())]


@pytest.mark.parametrize("doc, key", KEYS)
def test_every_documented_key_exists_in_some_command(doc, key):
    errors = []
    for command in ("train", "evaluate", "predict", "ensemble", "export", "explain", "clean", "preview"):
        try:
            compose_ok(command, [first_choice(key)])
            return
        except Exception as err:  # noqa: BLE001 - the message is the evidence
            errors.append(f"{command}: {str(err).splitlines()[0]}")
    pytest.fail(f"{doc}: `{key}` composes in no command: {errors[0]}")
