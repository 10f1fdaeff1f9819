//! Deterministic simulator (issue 5). Empty until then.
