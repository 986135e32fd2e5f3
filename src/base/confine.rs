//! Kernel confinement of one process: no_new_privs, a Landlock ruleset (the files it may read,
//! write and execute, the TCP ports it may bind or connect, no signals out of its domain) and
//! a seccomp filter (the system calls it may make; any other fails with EPERM).
//!
//! A program describes what it needs as a [`Policy`] (the policies of Quill's programs are
//! declared together in `mail::jail`, where an administrator reads them) and calls
//! [`apply`] once its setup is done: descriptors open, privileges dropped, configuration read,
//! and while it still has a single thread (Landlock and seccomp bind the calling thread and
//! what it creates afterwards, never threads that already run).
//!
//! A kernel without Landlock or seccomp, or an architecture this module has no system-call
//! table for, costs one warning line and the program runs as before; `QUILL_CONFINE=0` in the
//! environment turns confinement off for debugging (also one line).
#![forbid(unsafe_code)]

use crate::base::sys::{self, BpfInstruction};
use std::os::fd::AsFd;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

/// The network a program may use. Landlock (ABI 4) covers TCP bind and connect; seccomp
/// covers which socket families `socket(2)` may create (UDP for DNS is AF_INET/AF_INET6).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Network {
    /// No socket of its own at all (descriptors it inherited or accepted still work).
    None,
    /// Unix-domain sockets only (quill-smtpd's connection to quill-queued, NSS daemons).
    Local,
    /// Outbound TCP to any port and UDP (DNS); no TCP bind to a port of its own.
    Outbound,
    /// Unix-domain sockets and UDP for DNS (quill-smtpd's SPF lookups): socket(2) may make
    /// IPv4 and IPv6 sockets, and where Landlock rules the network (ABI 4 and later) every
    /// TCP connect and bind is still refused.
    Dns,
}

/// What one program may do once confined.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Policy {
    /// The program's name, for log lines.
    pub program: &'static str,
    /// Files and directories (with everything beneath) it may read.
    pub read: Vec<PathBuf>,
    /// Directories (with everything beneath) where it may create, write, rename and remove.
    pub write: Vec<PathBuf>,
    /// Programs it may execute (each also gets read): empty means no exec at all (execve is
    /// then missing from the system-call list too).
    pub exec: Vec<PathBuf>,
    /// Its network.
    pub network: Network,
    /// Its system calls: the groups below, joined.
    pub syscalls: Vec<&'static [Syscall]>,
}

/// A system call by name and number (this architecture's number).
pub type Syscall = (&'static str, i64);

/// What [`apply`] achieved.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Confinement {
    /// no_new_privs is set.
    pub no_new_privs: bool,
    /// The Landlock ABI version used, or None.
    pub landlock: Option<u32>,
    /// The seccomp filter is installed.
    pub seccomp: bool,
}

static CONFINED: AtomicBool = AtomicBool::new(false);

/// Whether this process applied a policy with no_new_privs: an exec can no longer gain
/// privileges, so running the setuid quill-queue would be pointless (`mail::submit` answers
/// a temporary failure instead).
pub fn active() -> bool {
    CONFINED.load(Ordering::Relaxed)
}

/// The environment switch: `QUILL_CONFINE=0` turns confinement off (for debugging, with
/// strace or a debugger attached). Ignored by setuid programs (none of them confines).
pub fn switched_off() -> bool {
    !sys::is_secure_exec() && std::env::var_os("QUILL_CONFINE").is_some_and(|v| v == "0")
}

/// Apply `policy` to this process, for good. Never fails: what the kernel cannot do is said
/// in one warning line and the program runs without it. A policy that the kernel refuses
/// (a bug) is also a warning, never a program that stops working.
pub fn apply(policy: &Policy) -> Confinement {
    let served = SERVED.lock().ok().and_then(|mut served| served.take());
    match served {
        // The server's filter covers this policy's calls (and every child inherited it): only
        // the Landlock ruleset the server built is left to enter.
        Some(served) if served.policy == *policy => enter_served(&served),
        // Another policy (a rule of the server changed QUILL_HOME, say): built and entered
        // here, its filter on top of the server's.
        _ => prepare(policy).enter(),
    }
}

/// What a server confined with [`serve`] keeps for the children it forks: the Landlock
/// ruleset of the children's policy, built once. Its filter the children inherit.
struct Served {
    /// The children's policy.
    policy: Policy,
    /// Its ruleset and the ABI, or why there is none.
    landlock: Result<(std::os::fd::OwnedFd, u32), String>,
}

/// Set in a server by [`serve`] (before it forks), taken by each child's [`apply`].
static SERVED: Mutex<Option<Served>> = Mutex::new(None);

/// Confine a server whose forked children run another program's code and then [`apply`] that
/// program's policy, `child` (quill-tcpserver running the linked quill-smtpd): the server
/// sets no_new_privs and installs the filter of `server` on itself now, once; every child
/// inherits both, at no cost; and `child`'s Landlock ruleset is built now too, so that a
/// child's [`apply`] of `child` costs one landlock_restrict_self and no filter. `server`'s
/// calls must include `child`'s and landlock_restrict_self (`mail::jail::tcpserver_linked`);
/// the server enters no Landlock domain of its own (it reads its rules file again on SIGHUP),
/// each child enters its own. Never fails, like [`apply`]: what the kernel cannot do is one
/// warning line.
pub fn serve(server: &Policy, child: &Policy) -> Confinement {
    let mut done = Confinement { no_new_privs: false, landlock: None, seccomp: false };
    if switched_off() {
        crate::base::log::warning("not confined: QUILL_CONFINE=0; running without confinement");
        return done;
    }
    let landlock = landlock(child);
    if let Err(e) = sys::set_no_new_privs() {
        crate::base::log::warning(&format!("unable to set no_new_privs: {e}; running without confinement"));
        return done;
    }
    done.no_new_privs = true;
    CONFINED.store(true, Ordering::Relaxed);
    match filter(server).and_then(|program| {
        sys::seccomp_filter(&program, true).map_err(|e| format!("unable to install the filter: {e}"))
    }) {
        Ok(()) => done.seccomp = true,
        // Each child then builds and installs its own, as without a server.
        Err(e) => {
            crate::base::log::warning(&format!("confined only in part: seccomp: {e}"));
            return done;
        }
    }
    if let Ok(mut served) = SERVED.lock() {
        *served = Some(Served { policy: child.clone(), landlock });
    }
    done
}

/// The descriptor of the ruleset a server keeps for its children ([`serve`]): a child that
/// closes the server's descriptors must keep this one open until it calls [`apply`].
pub fn served_descriptor() -> Option<std::os::fd::RawFd> {
    use std::os::fd::AsRawFd;
    let served = SERVED.lock().ok()?;
    served.as_ref()?.landlock.as_ref().ok().map(|(fd, _)| fd.as_raw_fd())
}

/// [`apply`] in a child of a server confined by [`serve`]: no_new_privs and the filter are
/// inherited; the ruleset is entered, and closed.
fn enter_served(served: &Served) -> Confinement {
    let mut done = Confinement { no_new_privs: true, landlock: None, seccomp: true };
    let entered = served.landlock.as_ref().map_err(String::clone).and_then(|(ruleset, abi)| {
        sys::landlock_restrict_self(ruleset.as_fd()).map_err(|e| format!("unable to enter the ruleset: {e}"))?;
        Ok(*abi)
    });
    match entered {
        Ok(abi) => done.landlock = Some(abi),
        Err(e) => crate::base::log::warning(&format!("confined only in part: Landlock: {e}")),
    }
    done
}

/// A policy made ready and not yet entered: the Landlock ruleset built (its rules added) and
/// the filter compiled. A server that forks many children under one policy can prepare once
/// and have each child [`Prepared::enter`] it: then a child pays three system calls
/// (prctl, landlock_restrict_self, seccomp) instead of four per path.
pub struct Prepared {
    landlock: Result<(std::os::fd::OwnedFd, u32), String>,
    filter: Result<Vec<BpfInstruction>, String>,
}

/// Build what `policy` needs, entering nothing (no Landlock ruleset when confinement is off).
pub fn prepare(policy: &Policy) -> Prepared {
    if switched_off() {
        return Prepared { landlock: Err("off".to_string()), filter: Err("off".to_string()) };
    }
    Prepared { landlock: landlock(policy), filter: filter(policy) }
}

impl Prepared {
    /// Enter the prepared confinement, for good, in the calling thread and what it starts.
    pub fn enter(&self) -> Confinement {
        enter(self)
    }
}

fn enter(prepared: &Prepared) -> Confinement {
    let mut done = Confinement { no_new_privs: false, landlock: None, seccomp: false };
    let warn = |what: String| crate::base::log::warning(&format!("{what}; running without confinement"));
    if switched_off() {
        warn("not confined: QUILL_CONFINE=0".to_string());
        return done;
    }
    if let Err(e) = sys::set_no_new_privs() {
        warn(format!("unable to set no_new_privs: {e}"));
        return done;
    }
    done.no_new_privs = true;
    CONFINED.store(true, Ordering::Relaxed);
    let mut missing = Vec::new();
    let entered = prepared.landlock.as_ref().map_err(String::clone).and_then(|(ruleset, abi)| {
        sys::landlock_restrict_self(ruleset.as_fd()).map_err(|e| format!("unable to enter the ruleset: {e}"))?;
        Ok(*abi)
    });
    match entered {
        Ok(abi) => done.landlock = Some(abi),
        Err(e) => missing.push(format!("Landlock: {e}")),
    }
    let installed = prepared.filter.as_ref().map_err(String::clone).and_then(|program| {
        sys::seccomp_filter(program, true).map_err(|e| format!("unable to install the filter: {e}"))
    });
    match installed {
        Ok(()) => done.seccomp = true,
        Err(e) => missing.push(format!("seccomp: {e}")),
    }
    if !missing.is_empty() {
        crate::base::log::warning(&format!("confined only in part: {}", missing.join("; ")));
    }
    done
}

// Landlock's access rights (<linux/landlock.h>) and the ABI that brought each.
const FS_EXECUTE: u64 = 1 << 0;
const FS_WRITE_FILE: u64 = 1 << 1;
const FS_READ_FILE: u64 = 1 << 2;
const FS_READ_DIR: u64 = 1 << 3;
const FS_REMOVE_DIR: u64 = 1 << 4;
const FS_REMOVE_FILE: u64 = 1 << 5;
const FS_MAKE_DIR: u64 = 1 << 7;
const FS_MAKE_REG: u64 = 1 << 8;
const FS_MAKE_SOCK: u64 = 1 << 9;
const FS_MAKE_FIFO: u64 = 1 << 10;
/// ABI 1 handles bits 0 to 12 (the last, MAKE_SYM; MAKE_CHAR and MAKE_BLOCK are never given).
const FS_ABI1: u64 = (1 << 13) - 1;
/// ABI 2: renames and links across directories (without it they are always refused).
const FS_REFER: u64 = 1 << 13;
/// ABI 3: truncate(2) and O_TRUNC.
const FS_TRUNCATE: u64 = 1 << 14;
/// ABI 5: ioctl on device files.
const FS_IOCTL_DEV: u64 = 1 << 15;
const NET_BIND_TCP: u64 = 1 << 0;
const NET_CONNECT_TCP: u64 = 1 << 1;
const SCOPE_ABSTRACT_UNIX_SOCKET: u64 = 1 << 0;
const SCOPE_SIGNAL: u64 = 1 << 1;

/// The rights a rule on a regular file may carry (the kernel refuses directory rights there).
const FS_FILE_RIGHTS: u64 = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV;
const READ: u64 = FS_READ_FILE | FS_READ_DIR;
const WRITE: u64 = READ
    | FS_WRITE_FILE
    | FS_REMOVE_DIR
    | FS_REMOVE_FILE
    | FS_MAKE_DIR
    | FS_MAKE_REG
    | FS_MAKE_SOCK
    | FS_MAKE_FIFO
    | FS_REFER
    | FS_TRUNCATE;
const EXEC: u64 = FS_EXECUTE | FS_READ_FILE;

/// The file-system rights an ABI knows: unknown bits are dropped, not refused.
fn fs_rights(abi: u32) -> u64 {
    let mut rights = FS_ABI1;
    if abi >= 2 {
        rights |= FS_REFER;
    }
    if abi >= 3 {
        rights |= FS_TRUNCATE;
    }
    if abi >= 5 {
        rights |= FS_IOCTL_DEV;
    }
    rights
}

/// Build the Landlock ruleset; with the ABI version used.
fn landlock(policy: &Policy) -> Result<(std::os::fd::OwnedFd, u32), String> {
    let abi = sys::landlock_abi().map_err(|e| format!("not available in this kernel ({e})"))?;
    let known = fs_rights(abi);
    // ABI 1 refuses every rename across directories, which the queue's writers need: such a
    // program keeps seccomp and its network rules but no file-system rules.
    let handled_fs = if abi < 2 && !policy.write.is_empty() { 0 } else { known };
    let handled_net = match (abi >= 4, policy.network) {
        (false, _) => 0,
        (true, Network::Outbound) => NET_BIND_TCP,
        (true, _) => NET_BIND_TCP | NET_CONNECT_TCP,
    };
    let scoped = if abi >= 6 { SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL } else { 0 };
    let ruleset = sys::landlock_ruleset(abi, handled_fs, handled_net, scoped)
        .map_err(|e| format!("unable to create a ruleset: {e}"))?;
    if handled_fs != 0 {
        let rules = [(&policy.read, READ), (&policy.write, WRITE), (&policy.exec, EXEC)];
        let mut seen: Vec<(&PathBuf, u64)> = Vec::new();
        for (paths, rights) in rules {
            for path in paths {
                // A path named twice with the same rights (the loader's cache is in both the
                // name service's and the libraries' lists) is one rule.
                if !seen.contains(&(path, rights)) {
                    seen.push((path, rights));
                    allow_path(ruleset.as_fd(), path, rights & known)?;
                }
            }
        }
    }
    Ok((ruleset, abi))
}

/// One path rule. A path that does not exist is no rule (a library directory this system
/// lacks); on a file, only the rights that apply to files.
fn allow_path(ruleset: std::os::fd::BorrowedFd<'_>, path: &std::path::Path, rights: u64) -> Result<(), String> {
    use std::os::unix::ffi::OsStrExt;
    let name = std::ffi::CString::new(path.as_os_str().as_bytes())
        .map_err(|_| format!("unable to open {}: a NUL in the name", path.display()))?;
    // openat itself, not std's open (which adds an fcntl per file): this runs per connection.
    let file = match sys::open_at(None, &name, libc::O_PATH, 0) {
        Ok(fd) => std::fs::File::from(fd),
        Err(e) if matches!(e.kind(), std::io::ErrorKind::NotFound) => return Ok(()),
        Err(e) => return Err(format!("unable to open {}: {e}", path.display())),
    };
    let is_dir = file.metadata().map(|m| m.is_dir()).map_err(|e| format!("unable to stat {}: {e}", path.display()))?;
    let rights = if is_dir { rights } else { rights & FS_FILE_RIGHTS };
    sys::landlock_allow_beneath(ruleset, file.as_fd(), rights)
        .map_err(|e| format!("unable to add a rule for {}: {e}", path.display()))
}

// Classic BPF, as seccomp reads it: the operations used and where seccomp_data keeps things.
const LD_W_ABS: u16 = 0x20;
const JEQ_K: u16 = 0x15;
const JGE_K: u16 = 0x35;
const RET_K: u16 = 0x06;
const DATA_NR: u32 = 0;
const DATA_ARCH: u32 = 4;
/// The low 32 bits of the first argument (little-endian: both architectures below).
const DATA_ARG0: u32 = 16;
const RET_KILL_PROCESS: u32 = 0x8000_0000;
const RET_ERRNO: u32 = 0x0005_0000;
const RET_ALLOW: u32 = 0x7fff_0000;

#[cfg(target_arch = "x86_64")]
const AUDIT_ARCH: Option<u32> = Some(0xc000_003e);
#[cfg(target_arch = "aarch64")]
const AUDIT_ARCH: Option<u32> = Some(0xc000_00b7);
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const AUDIT_ARCH: Option<u32> = None;

fn statement(code: u16, k: u32) -> BpfInstruction {
    BpfInstruction { code, jt: 0, jf: 0, k }
}

fn jump(code: u16, k: u32, jt: u8, jf: u8) -> BpfInstruction {
    BpfInstruction { code, jt, jf, k }
}

/// The socket families a network policy lets socket(2) create.
fn families(network: Network) -> &'static [i32] {
    match network {
        Network::None => &[],
        Network::Local => &[libc::AF_UNIX],
        Network::Outbound | Network::Dns => &[libc::AF_UNIX, libc::AF_INET, libc::AF_INET6],
    }
}

/// The filter for `policy`: a process of another architecture is killed (its numbers mean
/// other calls), x32 numbers on x86_64 fail, socket(2) is allowed only for the policy's
/// families, every listed call is allowed and every other one fails with EPERM. The list is
/// a binary search ([`search`]): about ten comparisons for any call, where a linear chain of
/// a hundred calls cost the kernel a hundred per call number when it installs the filter
/// (it runs the filter once per number to build its cache of always-allowed calls).
pub fn filter(policy: &Policy) -> Result<Vec<BpfInstruction>, String> {
    let arch = AUDIT_ARCH.ok_or("no system-call table for this architecture")?;
    let mut allowed: Vec<u32> = Vec::new();
    for group in &policy.syscalls {
        for &(_, nr) in group.iter() {
            let nr = nr as u32;
            if nr != libc::SYS_socket as u32 && !allowed.contains(&nr) {
                allowed.push(nr);
            }
        }
    }
    allowed.sort_unstable();
    let deny = statement(RET_K, RET_ERRNO | libc::EPERM as u32);
    let mut program = vec![
        statement(LD_W_ABS, DATA_ARCH),
        jump(JEQ_K, arch, 1, 0),
        statement(RET_K, RET_KILL_PROCESS),
        statement(LD_W_ABS, DATA_NR),
    ];
    if cfg!(target_arch = "x86_64") {
        // __X32_SYSCALL_BIT: the same calls under other numbers, which the chain would miss.
        program.push(jump(JGE_K, 0x4000_0000, 0, 1));
        program.push(deny);
    }
    let families = families(policy.network);
    // socket(2): [jeq socket] [load arg0] [jeq family → allow]… [deny] [allow], then the
    // search. Every jump is forward.
    if !families.is_empty() {
        let block = 1 + families.len() + 2;
        program.push(jump(JEQ_K, libc::SYS_socket as u32, 0, block as u8));
        program.push(statement(LD_W_ABS, DATA_ARG0));
        for (i, &family) in families.iter().enumerate() {
            program.push(jump(JEQ_K, family as u32, (families.len() - i) as u8, 0));
        }
        program.push(deny);
        program.push(statement(RET_K, RET_ALLOW));
    }
    program.extend(search(&allowed)?);
    Ok(program)
}

/// A binary search over sorted call numbers, every path ending in its own return: a few
/// numbers are compared one by one ([jeq]… [deny] [allow]); more are split at the middle by
/// one `jge` whose true branch skips the lower half's code.
fn search(sorted: &[u32]) -> Result<Vec<BpfInstruction>, String> {
    let deny = statement(RET_K, RET_ERRNO | libc::EPERM as u32);
    if sorted.len() <= 4 {
        let mut code: Vec<BpfInstruction> =
            sorted.iter().enumerate().map(|(i, &nr)| jump(JEQ_K, nr, (sorted.len() - i) as u8, 0)).collect();
        code.push(deny);
        code.push(statement(RET_K, RET_ALLOW));
        return Ok(code);
    }
    let middle = sorted.len() / 2;
    let lower = search(&sorted[..middle])?;
    let skip = u8::try_from(lower.len()).map_err(|_| "too many system calls for one jump".to_string())?;
    let mut code = vec![jump(JGE_K, sorted[middle], skip, 0)];
    code.extend(lower);
    code.extend(search(&sorted[middle..])?);
    Ok(code)
}

/// The names of a policy's system calls, in the filter's order (for documentation and tests).
pub fn names(policy: &Policy) -> Vec<&'static str> {
    let mut names: Vec<&'static str> = Vec::new();
    for group in &policy.syscalls {
        for &(name, _) in group.iter() {
            if !names.contains(&name) {
                names.push(name);
            }
        }
    }
    names
}

/// `calls!(read, write)` → `[("read", SYS_read), ("write", SYS_write)]`.
macro_rules! calls {
    ($($name:ident),* $(,)?) => {
        &[$((stringify!($name), sys_number::$name)),*]
    };
}

/// This architecture's numbers, by name (libc's `SYS_…` constants).
#[allow(non_upper_case_globals)]
mod sys_number {
    macro_rules! numbers {
        ($($name:ident = $sys:ident),* $(,)?) => { $(pub const $name: i64 = libc::$sys as i64;)* };
    }
    numbers!(
        read = SYS_read,
        write = SYS_write,
        readv = SYS_readv,
        writev = SYS_writev,
        pread64 = SYS_pread64,
        pwrite64 = SYS_pwrite64,
        close = SYS_close,
        lseek = SYS_lseek,
        fstat = SYS_fstat,
        newfstatat = SYS_newfstatat,
        statx = SYS_statx,
        fcntl = SYS_fcntl,
        ioctl = SYS_ioctl,
        dup = SYS_dup,
        dup3 = SYS_dup3,
        mmap = SYS_mmap,
        munmap = SYS_munmap,
        mremap = SYS_mremap,
        mprotect = SYS_mprotect,
        madvise = SYS_madvise,
        brk = SYS_brk,
        rt_sigaction = SYS_rt_sigaction,
        rt_sigprocmask = SYS_rt_sigprocmask,
        rt_sigreturn = SYS_rt_sigreturn,
        sigaltstack = SYS_sigaltstack,
        futex = SYS_futex,
        exit = SYS_exit,
        exit_group = SYS_exit_group,
        clock_gettime = SYS_clock_gettime,
        clock_getres = SYS_clock_getres,
        clock_nanosleep = SYS_clock_nanosleep,
        nanosleep = SYS_nanosleep,
        gettimeofday = SYS_gettimeofday,
        getpid = SYS_getpid,
        getppid = SYS_getppid,
        gettid = SYS_gettid,
        getuid = SYS_getuid,
        geteuid = SYS_geteuid,
        getgid = SYS_getgid,
        getegid = SYS_getegid,
        getresuid = SYS_getresuid,
        getresgid = SYS_getresgid,
        getgroups = SYS_getgroups,
        getrandom = SYS_getrandom,
        sched_yield = SYS_sched_yield,
        sched_getaffinity = SYS_sched_getaffinity,
        rseq = SYS_rseq,
        set_robust_list = SYS_set_robust_list,
        prlimit64 = SYS_prlimit64,
        ppoll = SYS_ppoll,
        pselect6 = SYS_pselect6,
        uname = SYS_uname,
        getcwd = SYS_getcwd,
        restart_syscall = SYS_restart_syscall,
        setitimer = SYS_setitimer,
        getitimer = SYS_getitimer,
        getrusage = SYS_getrusage,
        tgkill = SYS_tgkill,
        pipe2 = SYS_pipe2,
        sysinfo = SYS_sysinfo,
        close_range = SYS_close_range,
        times = SYS_times,
        rt_sigtimedwait = SYS_rt_sigtimedwait,
        openat = SYS_openat,
        getdents64 = SYS_getdents64,
        readlinkat = SYS_readlinkat,
        faccessat = SYS_faccessat,
        faccessat2 = SYS_faccessat2,
        fadvise64 = SYS_fadvise64,
        statfs = SYS_statfs,
        fstatfs = SYS_fstatfs,
        flock = SYS_flock,
        fchdir = SYS_fchdir,
        chdir = SYS_chdir,
        renameat = SYS_renameat,
        renameat2 = SYS_renameat2,
        unlinkat = SYS_unlinkat,
        mkdirat = SYS_mkdirat,
        linkat = SYS_linkat,
        fsync = SYS_fsync,
        fdatasync = SYS_fdatasync,
        ftruncate = SYS_ftruncate,
        fchmod = SYS_fchmod,
        fchmodat = SYS_fchmodat,
        utimensat = SYS_utimensat,
        fallocate = SYS_fallocate,
        socket = SYS_socket,
        connect = SYS_connect,
        bind = SYS_bind,
        getsockname = SYS_getsockname,
        getpeername = SYS_getpeername,
        setsockopt = SYS_setsockopt,
        getsockopt = SYS_getsockopt,
        sendto = SYS_sendto,
        recvfrom = SYS_recvfrom,
        sendmsg = SYS_sendmsg,
        recvmsg = SYS_recvmsg,
        socketpair = SYS_socketpair,
        sendmmsg = SYS_sendmmsg,
        recvmmsg = SYS_recvmmsg,
        shutdown = SYS_shutdown,
        accept = SYS_accept,
        accept4 = SYS_accept4,
        clone = SYS_clone,
        clone3 = SYS_clone3,
        wait4 = SYS_wait4,
        waitid = SYS_waitid,
        kill = SYS_kill,
        setpgid = SYS_setpgid,
        getpgid = SYS_getpgid,
        setsid = SYS_setsid,
        set_tid_address = SYS_set_tid_address,
        execve = SYS_execve,
        prctl = SYS_prctl,
        landlock_create_ruleset = SYS_landlock_create_ruleset,
        landlock_add_rule = SYS_landlock_add_rule,
        landlock_restrict_self = SYS_landlock_restrict_self,
        seccomp = SYS_seccomp,
        membarrier = SYS_membarrier,
    );
    #[cfg(target_arch = "x86_64")]
    numbers!(
        poll = SYS_poll,
        select = SYS_select,
        dup2 = SYS_dup2,
        alarm = SYS_alarm,
        pipe = SYS_pipe,
        time = SYS_time,
        open = SYS_open,
        stat = SYS_stat,
        lstat = SYS_lstat,
        access = SYS_access,
        readlink = SYS_readlink,
        getdents = SYS_getdents,
        rename = SYS_rename,
        unlink = SYS_unlink,
        rmdir = SYS_rmdir,
        mkdir = SYS_mkdir,
        link = SYS_link,
        fork = SYS_fork,
        vfork = SYS_vfork,
        getpgrp = SYS_getpgrp,
        arch_prctl = SYS_arch_prctl,
    );
}

/// Every Rust program on glibc: memory, signals, time, descriptors it holds, exit. Also what
/// std's panic and abort paths and glibc's malloc and qsort reach for.
pub const BASE: &[Syscall] = calls!(
    read,
    write,
    ppoll,
    pselect6,
    readv,
    writev,
    close,
    futex,
    clock_gettime,
    clock_nanosleep,
    nanosleep,
    gettimeofday,
    pread64,
    pwrite64,
    lseek,
    fstat,
    newfstatat,
    statx,
    fcntl,
    ioctl,
    dup,
    dup3,
    mmap,
    munmap,
    mremap,
    mprotect,
    madvise,
    brk,
    rt_sigaction,
    rt_sigprocmask,
    rt_sigreturn,
    rt_sigtimedwait,
    sigaltstack,
    exit,
    exit_group,
    clock_getres,
    getpid,
    getppid,
    gettid,
    getuid,
    geteuid,
    getgid,
    getegid,
    getresuid,
    getresgid,
    getgroups,
    getrandom,
    sched_yield,
    sched_getaffinity,
    rseq,
    set_robust_list,
    prlimit64,
    uname,
    getcwd,
    restart_syscall,
    setitimer,
    getitimer,
    getrusage,
    tgkill,
    pipe2,
    sysinfo,
    close_range,
    times,
    membarrier,
);
/// The x86_64 names of the same (the older calls glibc and std still make there).
#[cfg(target_arch = "x86_64")]
pub const BASE_ARCH: &[Syscall] = calls!(poll, select, dup2, alarm, pipe, time, arch_prctl);
#[cfg(not(target_arch = "x86_64"))]
pub const BASE_ARCH: &[Syscall] = &[];

/// Opening and looking at files (Landlock decides which).
pub const READ_FILES: &[Syscall] =
    calls!(openat, getdents64, readlinkat, faccessat, faccessat2, fadvise64, statfs, fstatfs, flock, fchdir, chdir);
#[cfg(target_arch = "x86_64")]
pub const READ_FILES_ARCH: &[Syscall] = calls!(open, stat, lstat, access, readlink, getdents);
#[cfg(not(target_arch = "x86_64"))]
pub const READ_FILES_ARCH: &[Syscall] = &[];

/// Changing directories: create, rename, link, remove, sync (Landlock decides where).
pub const WRITE_FILES: &[Syscall] = calls!(
    renameat, renameat2, unlinkat, mkdirat, linkat, fsync, fdatasync, ftruncate, fchmod, fchmodat, utimensat, fallocate
);
#[cfg(target_arch = "x86_64")]
pub const WRITE_FILES_ARCH: &[Syscall] = calls!(rename, unlink, rmdir, mkdir, link);
#[cfg(not(target_arch = "x86_64"))]
pub const WRITE_FILES_ARCH: &[Syscall] = &[];

/// Sockets of its own: the families come from the policy's [`Network`].
pub const SOCKETS: &[Syscall] = calls!(
    socket,
    connect,
    bind,
    getsockname,
    getpeername,
    setsockopt,
    getsockopt,
    sendto,
    recvfrom,
    sendmsg,
    recvmsg,
    sendmmsg,
    recvmmsg,
    shutdown
);

/// A connected pair of unix sockets made after confinement (quill-rspawn's channel to each kept
/// quill-remote, which carries the message's descriptor with each job): socketpair(2) makes
/// no socket that reaches outside the process, so [`Network`] does not decide it.
pub const SOCKET_PAIRS: &[Syscall] = calls!(socketpair);

/// Serving a listening socket it was given (quill-queued), on top of [`SOCKETS`].
pub const ACCEPT: &[Syscall] = calls!(accept, accept4);

/// Threads (std::thread).
pub const THREADS: &[Syscall] = calls!(clone, clone3, set_robust_list, rseq, madvise, mprotect, sched_getaffinity);

/// Children: fork, wait, signal, process groups; exec only where the policy names programs.
pub const CHILDREN: &[Syscall] = calls!(clone, clone3, wait4, waitid, kill, setpgid, getpgid, setsid, set_tid_address);
#[cfg(target_arch = "x86_64")]
pub const CHILDREN_ARCH: &[Syscall] = calls!(fork, vfork, getpgrp);
#[cfg(not(target_arch = "x86_64"))]
pub const CHILDREN_ARCH: &[Syscall] = &[];

/// execve, for a policy whose `exec` names programs. The programs run under the same
/// Landlock domain and filter, so they must need no more than the policy gives; with
/// [`CONFINE_CALLS`] each can confine itself further (quill-remote under quill-rspawn).
pub const EXEC_CALLS: &[Syscall] = calls!(execve);

/// The calls that confine a process further (Landlock and seccomp can only take rights away,
/// never add any): for a program that executes others which confine themselves, and for a
/// server whose forked children do ([`serve`]). prctl also names a process (PR_SET_NAME).
pub const CONFINE_CALLS: &[Syscall] =
    calls!(prctl, landlock_create_ruleset, landlock_add_rule, landlock_restrict_self, seccomp);

/// The system libraries: what the dynamic loader reads (and the kernel opens for exec, the
/// interpreter) when a confined program executes another, and what NSS loads.
pub const SYSTEM_LIBRARIES: &[&str] = &["/lib", "/lib64", "/usr/lib", "/usr/lib64", "/etc/ld.so.cache"];

/// The name service's files, for getpwnam (quill-smtpd's recipient check).
pub const NAME_SERVICE: &[&str] =
    &["/etc/passwd", "/etc/group", "/etc/nsswitch.conf", "/etc/ld.so.cache", "/etc/host.conf", "/etc/hosts"];

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(network: Network, syscalls: Vec<&'static [Syscall]>) -> Policy {
        Policy { program: "test", read: vec![], write: vec![], exec: vec![], network, syscalls }
    }

    /// Run the filter the way the kernel does, on one call: the verdict.
    fn verdict(program: &[BpfInstruction], arch: u32, nr: u32, arg0: u32) -> u32 {
        let (mut pc, mut acc) = (0usize, 0u32);
        loop {
            let i = program[pc];
            match i.code {
                LD_W_ABS => {
                    acc = match i.k {
                        DATA_NR => nr,
                        DATA_ARCH => arch,
                        DATA_ARG0 => arg0,
                        _ => panic!("load of {}", i.k),
                    }
                }
                JEQ_K => pc += usize::from(if acc == i.k { i.jt } else { i.jf }),
                JGE_K => pc += usize::from(if acc >= i.k { i.jt } else { i.jf }),
                RET_K => return i.k,
                other => panic!("code {other:#x}"),
            }
            pc += 1;
        }
    }

    #[test]
    fn the_filter_allows_the_list_and_refuses_the_rest() {
        let Some(arch) = AUDIT_ARCH else { return };
        let p = policy(Network::Local, vec![BASE, READ_FILES, SOCKETS]);
        let program = filter(&p).expect("filter");
        let eperm = RET_ERRNO | libc::EPERM as u32;
        for &(name, nr) in BASE.iter().chain(READ_FILES).chain(SOCKETS) {
            if name != "socket" {
                assert_eq!(verdict(&program, arch, nr as u32, 0), RET_ALLOW, "{name}");
            }
        }
        assert_eq!(verdict(&program, arch, libc::SYS_execve as u32, 0), eperm);
        assert_eq!(verdict(&program, arch, libc::SYS_ptrace as u32, 0), eperm);
        let socket = libc::SYS_socket as u32;
        assert_eq!(verdict(&program, arch, socket, libc::AF_UNIX as u32), RET_ALLOW);
        assert_eq!(verdict(&program, arch, socket, libc::AF_INET as u32), eperm);
        assert_eq!(verdict(&program, arch ^ 1, libc::SYS_read as u32, 0), RET_KILL_PROCESS);
        if cfg!(target_arch = "x86_64") {
            assert_eq!(verdict(&program, arch, 0x4000_0000, 0), eperm);
        }
        let none = filter(&policy(Network::None, vec![BASE, SOCKETS])).expect("filter");
        assert_eq!(verdict(&none, arch, socket, libc::AF_UNIX as u32), eperm);
    }

    #[test]
    fn unknown_access_rights_are_dropped() {
        assert_eq!(fs_rights(1) & (FS_REFER | FS_TRUNCATE | FS_IOCTL_DEV), 0);
        assert_eq!(fs_rights(3) & FS_IOCTL_DEV, 0);
        assert_ne!(fs_rights(7) & FS_IOCTL_DEV, 0);
    }
}
