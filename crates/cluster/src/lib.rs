//! ATS lock manager (issue 4): lockspace, heartbeats, locks, miscompare resolver. Empty until then.
