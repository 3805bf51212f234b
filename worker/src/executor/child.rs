//! An attempt's child process: its own process group and resource limits, and signals to the
//! whole group. The one place the worker uses `unsafe` (`pre_exec`, `setrlimit`, `killpg`),
//! each call with its reason beside it.
//!
//! ```text
//!   spawn: fork ─▶ setpgid(0, 0) ─▶ setrlimit CPU, AS, NOFILE (soft = hard) ─▶ exec /bin/sh
//!   stop:  killpg(TERM) ─▶ the shell exits, or the grace ends ─▶ killpg(KILL)
//!   drop:  killpg(KILL), so an abandoned attempt leaves no process behind
//! ```

#![allow(unsafe_code)]

use std::io;

use super::config::Limits;

#[cfg(all(target_os = "linux", target_env = "gnu"))]
type Resource = libc::__rlimit_resource_t;
#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
type Resource = libc::c_int;

/// Makes the child the leader of a new process group and applies `limits` to it before it
/// runs the program. Limits can only go down: a limit above the worker's own hard limit is
/// the worker's, and the child cannot raise it again (soft and hard are set alike).
pub(crate) fn confine(cmd: &mut tokio::process::Command, limits: Limits) {
    cmd.process_group(0);
    let Limits { cpu_secs, memory_bytes, open_files, .. } = limits;
    // SAFETY: the closure runs in the forked child before exec. It makes only the
    // async-signal-safe getrlimit/setrlimit system calls, allocates nothing, takes no lock,
    // and touches no state of the parent's (its captures are plain integers).
    unsafe {
        cmd.pre_exec(move || {
            lower(libc::RLIMIT_CPU, cpu_secs)?;
            lower(libc::RLIMIT_AS, memory_bytes)?;
            lower(libc::RLIMIT_NOFILE, open_files)
        });
    }
}

/// Sets `resource` to `value` (soft and hard), or to the current hard limit if that is lower;
/// 0 leaves it alone.
fn lower(resource: Resource, value: u64) -> io::Result<()> {
    if value == 0 {
        return Ok(());
    }
    let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `current` is a valid, writable rlimit for the call's duration.
    if unsafe { libc::getrlimit(resource, &mut current) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let v = (value as libc::rlim_t).min(current.rlim_max);
    let wanted = libc::rlimit { rlim_cur: v, rlim_max: v };
    // SAFETY: `wanted` is a valid rlimit for the call's duration.
    if unsafe { libc::setrlimit(resource, &wanted) } != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// A signal for a whole group.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Signal {
    Term,
    Kill,
}

/// The process group of one attempt (its id is the leader's pid). Dropped while armed, it
/// SIGKILLs the group: an attempt whose future is dropped (a task abort, a panic, the worker
/// shutting down) leaves nothing running.
#[derive(Debug)]
pub(crate) struct Group {
    pgid: libc::pid_t,
    armed: bool,
}

impl Group {
    /// The group led by `pid`, a child just spawned with [`confine`].
    pub(crate) fn led_by(pid: u32) -> Group {
        let pgid = libc::pid_t::try_from(pid).expect("a pid fits pid_t");
        // killpg(0) or (1) would signal the worker's own group, or everything.
        assert!(pgid > 1, "pid {pid} cannot lead an attempt's group");
        Group { pgid, armed: true }
    }

    /// Sends `signal` to every process of the group; false when none is left.
    pub(crate) fn signal(&self, signal: Signal) -> bool {
        if !self.armed {
            return false;
        }
        let sig = match signal {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
        };
        // SAFETY: killpg takes plain integers; `pgid` is a group this attempt created
        // (checked > 1 in `led_by`), never the worker's own.
        unsafe { libc::killpg(self.pgid, sig) == 0 }
    }

    /// SIGKILLs what is left of the group and forgets it (its id may be reused afterwards).
    pub(crate) fn kill_and_disarm(&mut self) {
        self.signal(Signal::Kill);
        self.armed = false;
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        if self.armed {
            self.signal(Signal::Kill);
        }
    }
}
