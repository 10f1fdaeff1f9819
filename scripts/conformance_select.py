#!/usr/bin/env python3
"""Turns a list of suites to run, and tests to leave out, into iscsi-test-cu's --test argument.

usage: iscsi-test-cu --list | conformance_select.py FAMILY SUITE... [--except Suite.Test...]
       conformance_select.py --self-test

SUITE may be '*' (every suite of FAMILY). A suite with no test left out is selected whole ('FAMILY.Suite', so CUnit
runs it as one suite); a suite with some left out is selected test by test. iscsi-test-cu 1.19 takes a comma-separated
list but registers it from its last entry to its first (parse_and_add_tests walks it with strrchr), so the list is
printed in reverse to keep the suites, and the tests within them, in the order the suite defines: some tests depend
on the one before (Sanitize.Reset follows Sanitize.Reservations).

Exits 2 when a named suite or test is not in the list, so a typo cannot silently leave a test out.
"""
import sys


def parse_listing(text, family):
    """{suite: [test, ...]} in listed order, for one family of `iscsi-test-cu --list`."""
    suites = {}
    for line in text.split():
        parts = line.strip().split(".")
        if parts[0] != family or len(parts) != 3:
            continue
        suites.setdefault(parts[1], []).append(parts[2])
    return suites


def selection(suites, family, wanted, excluded):
    """The --test argument, or raises ValueError naming what is not in the listing."""
    names = list(suites) if wanted == ["*"] else wanted
    unknown = [s for s in names if s not in suites]
    for name in sorted(excluded):
        suite, _, test = name.partition(".")
        if test not in suites.get(suite, []):
            unknown.append(name)
    if unknown:
        raise ValueError(f"not in iscsi-test-cu --list for {family}: {', '.join(unknown)}")
    entries = []
    for suite in names:
        kept = [t for t in suites[suite] if f"{suite}.{t}" not in excluded]
        if len(kept) == len(suites[suite]):
            entries.append(f"{family}.{suite}")
        else:
            entries.extend(f"{family}.{suite}.{t}" for t in kept)
    return ",".join(reversed(entries))


def self_test():
    listing = "ALL\nSCSI\nSCSI.A\nSCSI.A.One\nSCSI.A.Two\nSCSI.B\nSCSI.B.Three\niSCSI.C.Four\n"
    suites = parse_listing(listing, "SCSI")
    assert suites == {"A": ["One", "Two"], "B": ["Three"]}, suites
    assert selection(suites, "SCSI", ["*"], []) == "SCSI.B,SCSI.A"
    assert selection(suites, "SCSI", ["*"], ["A.One"]) == "SCSI.B,SCSI.A.Two"
    assert selection(suites, "SCSI", ["B", "A"], []) == "SCSI.A,SCSI.B"
    for bad_suite, bad_test in ((["Z"], []), (["A"], ["A.Zero"]), (["A"], ["Q.One"]), (["A"], ["A"])):
        try:
            selection(suites, "SCSI", bad_suite, bad_test)
        except ValueError:
            continue
        raise AssertionError(f"accepted {bad_suite} {bad_test}")
    print("conformance_select self-test: ok")


def main(argv):
    if argv[1:] == ["--self-test"]:
        self_test()
        return 0
    args = argv[1:]
    if len(args) < 2:
        sys.exit(__doc__)
    family, rest = args[0], args[1:]
    excluded = []
    if "--except" in rest:
        at = rest.index("--except")
        rest, excluded = rest[:at], rest[at + 1:]
    try:
        print(selection(parse_listing(sys.stdin.read(), family), family, rest, set(excluded)))
    except ValueError as error:
        print(f"conformance_select.py: {error}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
