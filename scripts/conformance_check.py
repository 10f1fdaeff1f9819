#!/usr/bin/env python3
"""Compares run.sh --list output (on stdin) with the expected non-passing tests.

usage: conformance_check.py EXPECTED < scores
EXPECTED lines: '<skip|fail> <Suite.Test>  # why, and which issue owns it'. A test not listed must pass. A listed
test must still not pass (else the list is stale). Exit 0 when everything matches."""
import sys

expected = {}
for line in open(sys.argv[1]):
    line = line.split("#", 1)[0].strip()
    if line:
        verdict, test = line.split()
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
    if test not in expected:
        problems.append(f"unexpected {verdict}: {test}")
    elif verdict == "fail" and expected[test] == "skip":
        problems.append(f"expected skip, got fail: {test}")
for test in sorted(set(expected) - set(seen)):
    problems.append(f"now passes, remove from the expected list: {test}")
if not summary:
    problems.append("no score line from run.sh: did iscsi-test-cu run?")
for problem in problems:
    print(problem)
print(f"conformance: {summary}; {len(problems)} problem(s)")
sys.exit(1 if problems else 0)
