"""``rollguard rules test CASES...`` — unit tests for rule packs, promtool style (the logic is :mod:`rules.testing`).

Prints one block per cases file, one ``OK`` / ``FAILED`` line per test with what differs under a failure, and a
summary. Exit codes: 0 every test passed, 1 a test failed, 2 a cases file (or a rule file it names) is invalid or no
test matched ``--run``. Output carries no wall-clock time, so a run's output is the same every time.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import TextIO

from rules.case_loader import load_cases
from rules.cases import CasesInvalid
from rules.file_kinds import is_rule_file
from rules.testing import never_evaluated, run_case

__all__ = ["add_rules_test_parser", "cmd_rules_test", "cases_files"]


def add_rules_test_parser(rsub: argparse._SubParsersAction) -> None:
    t = rsub.add_parser("test", help="run rule unit tests (promtool-style cases files); exit 1 if any fails")
    t.add_argument("paths", nargs="+", metavar="CASES", help="cases files, or folders of *.yaml / *.yml cases files")
    t.add_argument("--run", action="append", metavar="REGEX", help="only tests whose name matches (repeatable)")
    t.add_argument("--coverage", action="store_true",
                   help="per file, list the rules no test gave enough data to decide (always insufficient)")
    t.set_defaults(func=cmd_rules_test)


def cases_files(paths: list[str], skipped: list[Path] | None = None) -> tuple[list[Path], list[str]]:
    """The cases files the arguments name (a folder's ``*.yaml``/``*.yml``, sorted) and the problems of those that
    name none. In a folder, files that are recognisably rule files (:func:`rules.file_kinds.is_rule_file`: a pack
    kept next to its cases) are not cases files; they are appended to ``skipped`` when given."""
    files, missing = [], []
    for given in paths:
        p = Path(given)
        if p.is_dir():
            found = sorted(f for f in p.iterdir() if f.suffix in (".yaml", ".yml") and f.is_file())
            rule_files = [f for f in found if _is_rule_file(f)]
            files += [f for f in found if f not in rule_files]
            if skipped is not None:
                skipped += rule_files
            if not found:
                missing.append(f"{given}: folder holds no *.yaml or *.yml files")
            elif len(rule_files) == len(found):
                missing.append(f"{given}: folder holds only rule files, no cases files")
        elif p.is_file():
            files.append(p)
        else:
            missing.append(f"{given}: no such file or folder")
    return files, missing


def _is_rule_file(path: Path) -> bool:
    try:
        return is_rule_file(path, path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError):
        return False  # not for us to judge: loading it as a cases file reports the problem


def cmd_rules_test(args: argparse.Namespace, out: TextIO | None = None) -> int:
    out = out or sys.stdout
    try:
        patterns = [re.compile(r) for r in args.run or ()]
    except re.error as exc:
        print(f"rollguard: error: --run: invalid regular expression: {exc}", file=sys.stderr)
        return 2
    skipped: list[Path] = []
    files, missing = cases_files(args.paths, skipped)
    for m in missing:
        print(f"rollguard: error: {m}", file=sys.stderr)
    invalid = bool(missing)
    passed = failed = 0
    for path in files:
        print(f"Unit testing: {path}", file=out)
        try:
            cf = load_cases(path)
        except CasesInvalid as exc:
            invalid = True
            for err in exc.errors:
                print(f"  {err}", file=out)
            print(f"  INVALID: {len(exc.errors)} error(s)", file=out)
            continue
        results = []
        for case in cf.cases:
            if patterns and not any(p.search(case.name) for p in patterns):
                continue
            result = run_case(cf, case)
            results.append(result)
            if result.passed:
                passed += 1
                print(f"  OK      {case.name}", file=out)
                continue
            failed += 1
            print(f"  FAILED  {case.name}", file=out)
            for failure in result.failures:
                print("    " + failure.replace("\n", "\n    "), file=out)
        if results and args.coverage:
            missed = never_evaluated(cf, results)
            n = sum(len(rs.rules) for rs in cf.rulesets)
            print(f"  coverage: {n - len(missed)}/{n} rules had enough data to decide in some test"
                  + (f"; never: {', '.join(missed)}" if missed else ""), file=out)  # fmt: skip
    total = passed + failed
    print(f"{total} test(s) in {len(files)} file(s): {passed} passed, {failed} failed"
          + (", some files invalid" if invalid else "")
          + (f"; skipped {len(skipped)} rule file(s)" if skipped else ""), file=out)  # fmt: skip
    if invalid:
        return 2
    if patterns and not total:
        print(f"rollguard: error: no test matched --run {' '.join(args.run)}", file=sys.stderr)
        return 2
    return 1 if failed else 0
