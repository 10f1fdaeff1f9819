#!/usr/bin/env python3
"""Compares conformance_score.py output (on stdin) for one kind of LUN with the tests expected not to pass on it.

usage: conformance_check.py EXPECTED KIND < scores

EXPECTED lines: 'VERDICT KIND Suite.Test  # reason'. VERDICT is
  skip      the test may only be skipped;
  fail      the test may be skipped or fail (it belongs to an open issue);
  either    the test may pass or fail (its outcome depends on the machine's speed; the reason says how).
KIND is the LUN kind the entry applies to (default, 512e, read-only, sanitize, sanitize-small, chap): an entry for one kind excuses no other.
A test not listed must pass. A listed skip or fail that passes fails the check (the list only shrinks). Exit 0 when
all matches."""
import sys

KINDS = ("default", "512e", "read-only", "sanitize", "sanitize-small", "chap")
VERDICTS = ("skip", "fail", "either")

path, kind = sys.argv[1], sys.argv[2]
if kind not in KINDS:
    sys.exit(f"conformance_check.py: unknown LUN kind {kind!r}")
expected = {}
for number, line in enumerate(open(path), 1):
    line = line.split("#", 1)[0].strip()
    if not line:
        continue
    fields = line.split()
    if len(fields) != 3 or fields[0] not in VERDICTS or fields[1] not in KINDS:
        sys.exit(f"{path}:{number}: expected 'VERDICT KIND Suite.Test' with VERDICT one of {VERDICTS} and KIND one "
                 f"of {KINDS}, got {line!r}")
    verdict, entry_kind, test = fields
    if entry_kind == kind:
        expected[test] = verdict


seen = {}
summary = ""
for line in sys.stdin:
    parts = line.split()
    if len(parts) == 2 and parts[0] in ("skip", "fail"):
        seen[parts[1]] = parts[0]
    elif line.startswith("pass="):
        summary = line.strip()

problems = []
for test, verdict in sorted(seen.items()):
    allowed = expected.get(test)
    if allowed is None:
        problems.append(f"unexpected {verdict}: {test}")
    elif allowed == "skip" and verdict == "fail":
        problems.append(f"expected at most a skip, got fail: {test}")
    elif allowed == "either" and verdict == "skip":
        problems.append(f"expected a pass or a fail, got skip: {test}")
for test in sorted(set(expected) - set(seen)):
    if expected[test] != "either":
        problems.append(f"now passes, remove it from {path}: {kind} {test}")
if not summary:
    problems.append("no score line from conformance_score.py: did iscsi-test-cu run?")
for problem in problems:
    print(problem)
print(f"conformance {kind}: {summary}; {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
