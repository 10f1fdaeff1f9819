//! Fits the process's descriptor limit (RLIMIT_NOFILE) to the connection limit at start, so that accepting the
//! configured number of connections never fails with EMFILE halfway: each connection holds its socket and a
//! duplicate kept to watch for the peer's close (`SessionHandle`).

use crate::config::ServeError;

/// Descriptors per connection: the socket and the session's duplicate of it.
const DESCRIPTORS_PER_CONNECTION: u64 = 2;
/// Descriptors kept for everything else: listeners, LUN backings and state files, io_uring rings, the runtime,
/// stdio.
const RESERVED_DESCRIPTORS: u64 = 512;

fn needed(connections: usize) -> u64 {
    connections as u64 * DESCRIPTORS_PER_CONNECTION + RESERVED_DESCRIPTORS
}

fn get() -> std::io::Result<libc::rlimit> {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into the struct we own.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(limit)
}

fn set(limit: libc::rlimit) -> std::io::Result<()> {
    // SAFETY: setrlimit reads one rlimit from a struct we own.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Raises the soft limit (and, when permitted, the hard limit) to what `connections` need, and returns the
/// connection limit to serve with: `connections` when it fits; for the default, as many as fit, logged; for a
/// limit the operator asked for (`explicit`), an error that names both numbers.
pub fn fit_connection_limit(connections: usize, explicit: bool) -> Result<usize, ServeError> {
    let wanted = needed(connections);
    let current = get().map_err(ServeError::Io)?;
    if current.rlim_cur >= wanted {
        return Ok(connections);
    }
    let raised_hard = libc::rlimit {
        rlim_cur: wanted,
        rlim_max: current.rlim_max.max(wanted),
    };
    // Raising the hard limit needs CAP_SYS_RESOURCE; without it, go as far as the hard limit allows.
    if set(raised_hard).is_err() {
        let _ = set(libc::rlimit {
            rlim_cur: current.rlim_max.min(wanted),
            rlim_max: current.rlim_max,
        });
    }
    let now = get().map_err(ServeError::Io)?.rlim_cur;
    if now >= wanted {
        tracing::info!(
            "raised the open-file limit from {} to {now} for {connections} connections",
            current.rlim_cur
        );
        return Ok(connections);
    }
    let fitting = (now.saturating_sub(RESERVED_DESCRIPTORS) / DESCRIPTORS_PER_CONNECTION) as usize;
    if explicit || fitting == 0 {
        return Err(ServeError::Invalid(format!(
            "max_connections = {connections} needs {wanted} open files, but RLIMIT_NOFILE allows {now} \
             (hard limit {}); raise it (ulimit -n, LimitNOFILE=) or lower max_connections",
            current.rlim_max
        )));
    }
    tracing::info!(
        "RLIMIT_NOFILE allows {now} open files: serving at most {fitting} connections, not the default \
         {connections}; raise the limit (ulimit -n, LimitNOFILE=) for more"
    );
    Ok(fitting)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_soft_limit_is_raised_to_fit_the_connections() {
        let connections = 1000;
        assert_eq!(
            fit_connection_limit(connections, true).unwrap(),
            connections
        );
        assert!(get().unwrap().rlim_cur >= needed(connections));
    }

    #[test]
    fn a_limit_beyond_what_the_kernel_allows_is_an_error_only_when_asked_for() {
        // fs.nr_open bounds every process's descriptor limit, root's too.
        let nr_open: u64 = std::fs::read_to_string("/proc/sys/fs/nr_open")
            .expect("/proc/sys/fs/nr_open")
            .trim()
            .parse()
            .expect("a number");
        let impossible = (nr_open / DESCRIPTORS_PER_CONNECTION + 1) as usize;
        let error = fit_connection_limit(impossible, true).unwrap_err();
        assert!(error.to_string().contains("RLIMIT_NOFILE"), "{error}");
        let lowered = fit_connection_limit(impossible, false).unwrap();
        assert!(lowered > 0 && lowered < impossible, "{lowered}");
    }
}
