//! The seccomp filter of every kernel process: system calls a code-execution sandbox
//! never needs fail with `EPERM` (modelled on Docker's default profile, as a deny list):
//! kernel keyrings, eBPF, perf events, io_uring, ptrace and cross-process memory access,
//! mounting and namespaces (nested user namespaces included, through `clone` flags),
//! kernel modules, reboot and kexec, clock and host name changes, swap, quotas, raw I/O
//! ports, handle-based opens, `userfaultfd` and the kernel log. `clone3` fails with
//! `ENOSYS` (its flags cannot be inspected; the C library falls back to `clone`). Calls of
//! another ABI than the agent's (32-bit `int 0x80`, x32) fail as a whole.
//!
//! Inside bubblewrap the filter is handed to bwrap (`--seccomp FD`), which installs it
//! after building the sandbox; without bubblewrap it is installed between fork and exec.

use std::os::fd::{AsRawFd, OwnedFd};

/// The fd a kernel process's bwrap reads the filter from.
pub const BWRAP_FD: i32 = 5;

// Classic BPF opcodes (linux/bpf_common.h, linux/filter.h).
const BPF_LD_W_ABS: u16 = 0x20; // BPF_LD | BPF_W | BPF_ABS
const BPF_JEQ_K: u16 = 0x15; // BPF_JMP | BPF_JEQ | BPF_K
const BPF_JGE_K: u16 = 0x35; // BPF_JMP | BPF_JGE | BPF_K
const BPF_JSET_K: u16 = 0x45; // BPF_JMP | BPF_JSET | BPF_K
const BPF_RET_K: u16 = 0x06; // BPF_RET | BPF_K

// Offsets in struct seccomp_data.
const OFFSET_NR: u32 = 0;
const OFFSET_ARCH: u32 = 4;
/// The low 32 bits of the first argument (little-endian).
const OFFSET_ARG0: u32 = 16;

const RET_ALLOW: u32 = 0x7fff_0000;
const RET_ERRNO: u32 = 0x0005_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: u32 = 0xc000_003e; // AUDIT_ARCH_X86_64
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: u32 = 0xc000_00b7; // AUDIT_ARCH_AARCH64

/// x32 system calls carry this bit in their number.
#[cfg(target_arch = "x86_64")]
const X32_SYSCALL_BIT: u32 = 0x4000_0000;

/// `clone` flags that create namespaces.
const CLONE_NAMESPACES: u32 = (libc::CLONE_NEWNS
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUSER
    | libc::CLONE_NEWPID
    | libc::CLONE_NEWNET
    | libc::CLONE_NEWCGROUP) as u32;

/// System calls that fail with `EPERM`.
fn denied() -> Vec<i64> {
    let mut calls = vec![
        libc::SYS_io_uring_setup,
        libc::SYS_io_uring_enter,
        libc::SYS_io_uring_register,
        libc::SYS_keyctl,
        libc::SYS_add_key,
        libc::SYS_request_key,
        libc::SYS_bpf,
        libc::SYS_perf_event_open,
        libc::SYS_ptrace,
        libc::SYS_process_vm_readv,
        libc::SYS_process_vm_writev,
        libc::SYS_kcmp,
        libc::SYS_mount,
        libc::SYS_umount2,
        libc::SYS_pivot_root,
        libc::SYS_fsopen,
        libc::SYS_fsconfig,
        libc::SYS_fsmount,
        libc::SYS_fspick,
        libc::SYS_move_mount,
        libc::SYS_open_tree,
        libc::SYS_mount_setattr,
        libc::SYS_unshare,
        libc::SYS_setns,
        libc::SYS_init_module,
        libc::SYS_finit_module,
        libc::SYS_delete_module,
        libc::SYS_kexec_load,
        libc::SYS_kexec_file_load,
        libc::SYS_reboot,
        libc::SYS_swapon,
        libc::SYS_swapoff,
        libc::SYS_acct,
        libc::SYS_quotactl,
        libc::SYS_settimeofday,
        libc::SYS_clock_settime,
        libc::SYS_clock_adjtime,
        libc::SYS_adjtimex,
        libc::SYS_sethostname,
        libc::SYS_setdomainname,
        libc::SYS_open_by_handle_at,
        libc::SYS_name_to_handle_at,
        libc::SYS_userfaultfd,
        libc::SYS_syslog,
        libc::SYS_fanotify_init,
        libc::SYS_lookup_dcookie,
        libc::SYS_vhangup,
        libc::SYS_personality,
    ];
    #[cfg(target_arch = "x86_64")]
    calls.extend([
        libc::SYS_iopl,
        libc::SYS_ioperm,
        libc::SYS_uselib,
        libc::SYS_ustat,
        libc::SYS_sysfs,
        libc::SYS__sysctl,
        libc::SYS_nfsservctl,
    ]);
    calls
}

fn stmt(code: u16, k: u32) -> libc::sock_filter {
    libc::sock_filter { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> libc::sock_filter {
    libc::sock_filter { code, jt, jf, k }
}

/// The filter program.
pub fn program() -> Vec<libc::sock_filter> {
    let eperm = RET_ERRNO | libc::EPERM as u32;
    let enosys = RET_ERRNO | libc::ENOSYS as u32;
    let mut p = vec![
        // Another ABI than ours: every call fails.
        stmt(BPF_LD_W_ABS, OFFSET_ARCH),
        jump(BPF_JEQ_K, AUDIT_ARCH, 1, 0),
        stmt(BPF_RET_K, eperm),
        stmt(BPF_LD_W_ABS, OFFSET_NR),
    ];
    #[cfg(target_arch = "x86_64")]
    p.extend([jump(BPF_JGE_K, X32_SYSCALL_BIT, 0, 1), stmt(BPF_RET_K, eperm)]);
    for nr in denied() {
        p.extend([jump(BPF_JEQ_K, nr as u32, 0, 1), stmt(BPF_RET_K, eperm)]);
    }
    p.extend([jump(BPF_JEQ_K, libc::SYS_clone3 as u32, 0, 1), stmt(BPF_RET_K, enosys)]);
    // clone with a namespace flag (its first argument on x86_64 and aarch64).
    p.extend([
        jump(BPF_JEQ_K, libc::SYS_clone as u32, 0, 3),
        stmt(BPF_LD_W_ABS, OFFSET_ARG0),
        jump(BPF_JSET_K, CLONE_NAMESPACES, 0, 1),
        stmt(BPF_RET_K, eperm),
        stmt(BPF_RET_K, RET_ALLOW),
    ]);
    p
}

/// The program as bytes, the form bwrap reads.
fn bytes(program: &[libc::sock_filter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(program.len() * 8);
    for f in program {
        out.extend_from_slice(&f.code.to_ne_bytes());
        out.push(f.jt);
        out.push(f.jf);
        out.extend_from_slice(&f.k.to_ne_bytes());
    }
    out
}

/// A pipe holding the filter for one bwrap: its read end (the program fits in a pipe's
/// buffer, so the write never blocks).
pub fn for_bwrap() -> std::io::Result<OwnedFd> {
    use std::io::Write;
    let program = bytes(FILTER.get_or_init(program));
    let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC).map_err(std::io::Error::from)?;
    std::fs::File::from(write).write_all(&program)?;
    Ok(read)
}

/// The filter, built once.
static FILTER: std::sync::OnceLock<Vec<libc::sock_filter>> = std::sync::OnceLock::new();

/// The filter for direct installation (built before any fork: the child must not
/// allocate).
pub fn direct() -> &'static [libc::sock_filter] {
    FILTER.get_or_init(program)
}

/// Installs `filter` in the calling process (between fork and exec: system calls only).
///
/// # Safety
/// Async-signal-safe; `filter` must stay valid for the call.
pub unsafe fn install(filter: &[libc::sock_filter]) -> std::io::Result<()> {
    let prog = libc::sock_fprog { len: filter.len() as u16, filter: filter.as_ptr() as *mut libc::sock_filter };
    // SAFETY: plain system calls with a valid program.
    unsafe {
        if libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0 {
            return Err(std::io::Error::last_os_error());
        }
        if libc::syscall(libc::SYS_seccomp, libc::SECCOMP_SET_MODE_FILTER, 0, &prog as *const libc::sock_fprog) < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Puts `fd` (already moved above the fds the child sets up) at [`BWRAP_FD`] in the
/// child, kept open across exec. No new fd number is allocated: the child's open-file
/// limit may already be lower than the agent's highest fd.
///
/// # Safety
/// Async-signal-safe; between fork and exec.
pub unsafe fn place_for_bwrap(fd: i32) -> std::io::Result<()> {
    // SAFETY: a plain system call on fds valid in the child.
    if unsafe { libc::dup2(fd, BWRAP_FD) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// The raw fd of a filter pipe, for [`place_for_bwrap`].
pub fn raw(fd: &OwnedFd) -> i32 {
    fd.as_raw_fd()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_program_is_well_formed() {
        let p = program();
        assert!(p.len() < 255, "jumps are relative and short: {}", p.len());
        assert_eq!(p.last().map(|f| (f.code, f.k)), Some((BPF_RET_K, RET_ALLOW)));
        assert_eq!(bytes(&p).len(), p.len() * 8);
    }
}
