#!/usr/bin/env python3
"""Checks that the operator's documentation names only what exists (scripts/test, stage docs).

- Every `section.key` and `[section]` written in backticks in docs/operations.md is a key or a
  table of annuaire.example.toml (which documents every key, commented or not).
- Every metric named in docs/operations.md and docs/prometheus/annuaire-rules.yml is one that
  src/ records, and the guide's metrics table names every metric src/ records.
- Every ```toml block of docs/operations.md is written to a file of its own, for
  `annuaire check-config` (scripts/test runs it on each).

Usage: check_docs.py REPO_ROOT TOML_OUT_DIR
Prints what is wrong and exits 1; prints a summary and exits 0 otherwise.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

SECTION_RE = re.compile(r"^\[([a-z_.]+)\]\s*$")
# `key = …`, also commented out (`# key = …`): the example shows optional keys commented.
KEY_RE = re.compile(r"^#?\s*([a-z_]+)\s*=")
BACKTICK_RE = re.compile(r"`([^`\n]+)`")
METRIC_DEF_RE = re.compile(r"metrics::(?:counter|gauge|histogram)!\(\s*\"([a-z_]+)\"")
METRIC_USE_RE = re.compile(r"\bannuaire_[a-z]+_[a-z_]+\b")
HISTOGRAM_SUFFIXES = ("_bucket", "_sum", "_count")


def example_keys(example: Path) -> tuple[set[str], set[str]]:
    """The tables and the `table.key` names of annuaire.example.toml."""
    tables: set[str] = set()
    keys: set[str] = set()
    table = ""
    for line in example.read_text(encoding="utf-8").splitlines():
        m = SECTION_RE.match(line.strip())
        if m:
            table = m.group(1)
            tables.add(table)
            continue
        m = KEY_RE.match(line.strip())
        if m and table:
            keys.add(f"{table}.{m.group(1)}")
    return tables, keys


def check_config_names(
    guide: Path, tables: set[str], keys: set[str]
) -> tuple[list[str], int]:
    """Backticked configuration names in the guide that the example does not know."""
    top = {t.split(".")[0] for t in tables}
    errors = []
    checked = 0
    for number, line in enumerate(guide.read_text(encoding="utf-8").splitlines(), 1):
        for token in BACKTICK_RE.findall(line):
            token = token.strip()
            m = re.fullmatch(r"\[([a-z_.]+)\]", token)
            if m:
                checked += 1
                if m.group(1) not in tables:
                    errors.append(
                        f"{guide.name}:{number}: no table [{m.group(1)}] in the example"
                    )
                continue
            if not re.fullmatch(r"[a-z_]+(\.[a-z_]+)+", token):
                continue
            if token.split(".")[0] not in top:
                continue
            checked += 1
            if token not in keys and token not in tables:
                errors.append(
                    f"{guide.name}:{number}: `{token}` is not a key of the example"
                )
    return errors, checked


def recorded_metrics(src: Path) -> set[str]:
    """Metric names that src/ records."""
    names: set[str] = set()
    for path in src.rglob("*.rs"):
        names.update(METRIC_DEF_RE.findall(path.read_text(encoding="utf-8")))
    return names


def check_metric_names(files: list[Path], known: set[str]) -> list[str]:
    """Metric names in `files` that src/ does not record."""
    errors = []
    for path in files:
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            for name in METRIC_USE_RE.findall(line):
                base = name
                for suffix in HISTOGRAM_SUFFIXES:
                    if name.endswith(suffix) and name[: -len(suffix)] in known:
                        base = name[: -len(suffix)]
                if base not in known:
                    errors.append(
                        f"{path.name}:{number}: metric {name} is not recorded in src/"
                    )
    return errors


def write_toml_blocks(guide: Path, out: Path) -> int:
    """Writes each ```toml block of the guide to OUT/NN.toml; returns how many."""
    out.mkdir(parents=True, exist_ok=True)
    blocks = re.findall(
        r"^```toml\n(.*?)^```",
        guide.read_text(encoding="utf-8"),
        re.MULTILINE | re.DOTALL,
    )
    for i, block in enumerate(blocks, 1):
        (out / f"{i:02}.toml").write_text(block, encoding="utf-8")
    return len(blocks)


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    root = Path(sys.argv[1])
    guide = root / "docs" / "operations.md"
    rules = root / "docs" / "prometheus" / "annuaire-rules.yml"
    tables, keys = example_keys(root / "annuaire.example.toml")
    errors, checked = check_config_names(guide, tables, keys)
    known = recorded_metrics(root / "src")
    errors += check_metric_names([guide, rules], known)
    documented = set(METRIC_USE_RE.findall(guide.read_text(encoding="utf-8")))
    errors += [
        f"{guide.name}: metric {m} (recorded in src/) is not documented"
        for m in sorted(known - documented)
    ]
    blocks = write_toml_blocks(guide, Path(sys.argv[2]))
    for e in errors:
        print(e)
    if errors:
        return 1
    print(
        f"docs: {checked} configuration names and {len(known)} metrics checked; "
        f"{blocks} TOML blocks written for check-config"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
