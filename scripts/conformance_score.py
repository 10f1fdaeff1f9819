#!/usr/bin/env python3
"""Scores a verbose iscsi-test-cu log (libiscsi, CUnit's basic interface): each test is pass, skip or fail.

usage: conformance_score.py LOG        prints 'skip Suite.Test' / 'fail Suite.Test' lines, then
                                       'pass=N skip=N fail=N total=N'
       conformance_score.py --self-test

How CUnit reports a test: '  Test: NAME ...' and then, after whatever the test prints, its verdict, the word
'passed' or 'FAILED' at the start of a line (or straight after the '...'). That verdict is the score:
- 'FAILED', or no verdict at all (the run died inside the test): fail;
- 'passed' after libiscsi printed '[SKIPPED]' in the test: skip (iscsi-test-cu counts those as passed);
- 'passed' otherwise: pass, also when libiscsi printed '[FAILED] ...' lines: those are libiscsi's messages about a
  command that failed, which a test may expect, or of a suite's cleanup, not CUnit's verdict.
The number of fails is checked against CUnit's 'Run Summary' (its 'tests' row, column Failed): fewer fails here than
there means this scorer misread the log, and the scorer exits 2.
"""
import re
import sys

TEST = re.compile(r"^\s+Test: (\S+) \.\.\.(.*)$")
SUITE = re.compile(r"^Suite: (\S+)")
VERDICT = re.compile(r"^\s*(passed|FAILED)\b")
SUMMARY_TESTS = re.compile(r"^\s+tests\s+\d+\s+\d+\s+\S+\s+(\d+)")


def score(text):
    """(verdicts {Suite.Test: pass|skip|fail}, failed tests per CUnit's run summaries)."""
    verdicts = {}
    summary_failed = 0
    suite, test, lines = None, None, []

    def settle():
        if test is None:
            return
        verdict, skipped = None, False
        for line in lines:
            found = VERDICT.match(line)
            if found:
                verdict = found.group(1)
                break
            skipped = skipped or "[SKIPPED]" in line
        if verdict == "passed":
            verdicts[test] = "skip" if skipped else "pass"
        else:
            verdicts[test] = "fail"

    for line in text.splitlines():
        new_suite, new_test = SUITE.match(line), TEST.match(line)
        if new_suite or new_test or line.startswith("Run Summary"):
            settle()
            test, lines = None, []
        if new_suite:
            suite = new_suite.group(1)
        elif new_test:
            test = f"{suite}.{new_test.group(1)}"
            lines = [new_test.group(2)]
        elif test is not None:
            lines.append(line)
        tests_row = SUMMARY_TESTS.match(line)
        if tests_row and test is None:
            summary_failed += int(tests_row.group(1))
    settle()
    return verdicts, summary_failed


def report(verdicts):
    lines = [f"{v} {name}" for name, v in sorted(verdicts.items()) if v != "pass"]
    counts = {k: sum(1 for v in verdicts.values() if v == k) for k in ("pass", "skip", "fail")}
    lines.append(f"pass={counts['pass']} skip={counts['skip']} fail={counts['fail']} total={len(verdicts)}")
    return lines


SAMPLE = """\
Suite: CompareAndWrite
  Test: Simple ...passed
  Test: ExpectsAnError ...    [FAILED] READ16 failed with sense (the test wanted that)
passed
  Test: NotSupported ...    [SKIPPED] LBPPB < 2. Skipping test
passed
Suite: SanitizeReset
  Test: Reset ...    [FAILED] TESTUNITREADY failed with wrong sense
FAILED
    1. test_sanitize_reset.c:120  - CU_ASSERT_EQUAL(ret,0)
  Test: CleanupNoise ...passed    [FAILED] PRIN in the suite's cleanup
Suite: Dies
  Test: Crashed ...    [FAILED] connection lost
Run Summary:    Type  Total    Ran Passed Failed Inactive
              suites      3      3    n/a      0        0
               tests      6      6      4      2        0
    1. test_sanitize_reset.c:165  - CU_ASSERT_EQUAL(_r,0)    [FAILED] after the summary: not a test
"""


def self_test():
    verdicts, summary_failed = score(SAMPLE)
    expected = {
        "CompareAndWrite.Simple": "pass",
        "CompareAndWrite.ExpectsAnError": "pass",
        "CompareAndWrite.NotSupported": "skip",
        "SanitizeReset.Reset": "fail",
        "SanitizeReset.CleanupNoise": "pass",
        "Dies.Crashed": "fail",
    }
    assert verdicts == expected, verdicts
    assert summary_failed == 2, summary_failed
    assert report(verdicts)[-1] == "pass=3 skip=1 fail=2 total=6", report(verdicts)
    print("conformance_score.py self-test: ok")


def main():
    if sys.argv[1:] == ["--self-test"]:
        return self_test()
    if len(sys.argv) != 2:
        sys.exit(__doc__.split("\n\n")[1])
    with open(sys.argv[1], errors="replace") as f:
        verdicts, summary_failed = score(f.read())
    for line in report(verdicts):
        print(line)
    failed = sum(1 for v in verdicts.values() if v == "fail")
    if failed < summary_failed:
        print(f"conformance_score.py: CUnit's summaries count {summary_failed} failed tests, the log shows {failed}",
              file=sys.stderr)
        sys.exit(2)
    if not verdicts:
        print(f"conformance_score.py: no test in {sys.argv[1]}: did iscsi-test-cu run?", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
