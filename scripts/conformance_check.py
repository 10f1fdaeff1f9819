#!/usr/bin/env python3
"""Compares conformance_score.py output (on stdin) with the tests expected not to pass.

usage: conformance_check.py EXPECTED LOG < scores

EXPECTED lines: 'VERDICT Suite.Test  # reason'. VERDICT is
  skip      the test may only be skipped;
  fail      the test may be skipped or fail (it belongs to an open issue).
A test not listed must pass. A listed test that passes fails the check (the list only shrinks). Exit 0 when all
matches."""
import sys

expected = {}
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        verdict, test = line.split()
        if verdict not in ("skip", "fail"):
            sys.exit(f"{sys.argv[1]}: unknown verdict {verdict!r} for {test}")
        expected[test] = verdict
log = open(sys.argv[2], errors="replace").read()


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
for test in sorted(set(expected) - set(seen)):
    problems.append(f"now passes, remove it from {sys.argv[1]}: {test}")
if not summary:
    problems.append("no score line from conformance_score.py: did iscsi-test-cu run?")
for problem in problems:
    print(problem)
print(f"conformance: {summary}; {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
