//! quill-lspawn's engine: turn delivery requests from quill-send into quill-local runs under
//! the right uid, many at once, and report each result (doc/quill-lspawn.8).
//!
//! One thread, one poll loop over fd 0 (requests), a self-pipe for SIGCHLD, and the output
//! pipe of every running delivery. Nothing here waits for one child: a delivery ends when its
//! process has been reaped, and what it wrote is drained from its pipe then.
#![forbid(unsafe_code)]

use crate::base::fail::{Error, Outcome, Result};
use crate::mail::address;
use crate::mail::aliases::{self, Aliases};
use crate::mail::control::Control;
use crate::mail::queuefile::{self, Layout};
use crate::mail::spawnproto::{self, Reader, Report, Request};
use crate::mail::users::{self, AssignDb, Assignment, PasswdEntry, PasswdSource, Resolution};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// The only environment a delivery gets.
pub const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// What quill-lspawn was started with.
#[derive(Clone, Debug)]
pub struct Config {
    /// The Quill home (queue, users/, alias/, control/).
    pub home: PathBuf,
    /// The quill-local program to run.
    pub local: PathBuf,
    /// quill-start's argument: what a user without a `.qmail` gets (`./Maildir/`).
    pub default_delivery: Vec<u8>,
}

/// A file read again when its [`stamp`] changes (or it appears, or vanishes).
struct Cached<T> {
    path: PathBuf,
    stamp: Option<Stamp>,
    value: std::result::Result<T, String>,
}

impl<T> Cached<T> {
    fn new(path: PathBuf) -> Cached<T> {
        Cached { path, stamp: None, value: Err(String::new()) }
    }

    /// Stat the file; reload it with `load` if it changed (or appeared, or vanished).
    fn refresh(&mut self, load: impl FnOnce(&Path) -> Result<T>) -> std::result::Result<&T, &str> {
        let stamp = stamp(&self.path);
        if self.stamp != Some(stamp) {
            self.stamp = Some(stamp);
            self.value = load(&self.path).map_err(|e| e.message);
            if let Err(text) = &self.value {
                crate::base::log::warning(text);
            }
        }
        self.value.as_ref().map_err(String::as_str)
    }
}

/// How long cached password and group entries live at most, and how many are kept.
const DIRECTORY_LIFE: std::time::Duration = std::time::Duration::from_secs(60);
const DIRECTORY_SIZE: usize = 10_000;

type Stamp = Option<(u64, u64, u64, i64, i64)>;

/// What identifies a version of a file: device, inode, size and modification time.
fn stamp(path: impl AsRef<Path>) -> Stamp {
    std::fs::metadata(path).ok().map(|m| (m.dev(), m.ino(), m.size(), m.mtime(), m.mtime_nsec()))
}

/// The password and group databases, cached. A name that misses in /etc/passwd may walk
/// every NSS module (on systemd hosts, dozens of system calls), and listing a user's groups
/// reads all of /etc/group: too much for each delivery. Everything is forgotten when
/// /etc/passwd or /etc/group changes, after DIRECTORY_LIFE (for databases that are not files),
/// and when the cache grows past DIRECTORY_SIZE (a run of made-up names).
struct Directory {
    users: HashMap<String, Option<PasswdEntry>>,
    groups: HashMap<(Vec<u8>, u32), Vec<u32>>,
    stamps: Option<(Stamp, Stamp)>,
    born: std::time::Instant,
}

impl Directory {
    fn new() -> Directory {
        Directory { users: HashMap::new(), groups: HashMap::new(), stamps: None, born: std::time::Instant::now() }
    }

    /// Forget everything if the databases changed or the cache is old or big.
    fn check(&mut self) {
        let stamps = Some((stamp("/etc/passwd"), stamp("/etc/group")));
        if stamps != self.stamps
            || self.born.elapsed() > DIRECTORY_LIFE
            || self.users.len() + self.groups.len() > DIRECTORY_SIZE
        {
            self.users.clear();
            self.groups.clear();
            self.stamps = stamps;
            self.born = std::time::Instant::now();
        }
    }

    /// The user's supplementary groups: every group that lists the user name, plus its gid.
    fn groups(&mut self, user: &Assignment) -> std::result::Result<Vec<u32>, Refusal> {
        let key = (user.user.clone(), user.gid);
        if let Some(list) = self.groups.get(&key) {
            return Ok(list.clone());
        }
        let list = match std::ffi::CString::new(user.user.clone()) {
            Ok(name) => nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(user.gid))
                .map(|list| list.into_iter().map(|g| g.as_raw()).collect())
                .map_err(|e| {
                    temporary(format!(
                        "unable to list the groups of {}: {e} (#4.3.0)",
                        crate::base::log::safe(&user.user)
                    ))
                })?,
            Err(_) => vec![user.gid],
        };
        self.groups.insert(key, list.clone());
        Ok(list)
    }
}

impl PasswdSource for Directory {
    fn user(&mut self, name: &str) -> Result<Option<PasswdEntry>> {
        if let Some(entry) = self.users.get(name) {
            return Ok(entry.clone());
        }
        // Failures are not cached: the next delivery asks again.
        let entry = users::System.user(name)?;
        self.users.insert(name.to_string(), entry.clone());
        Ok(entry)
    }
}

/// A running delivery.
struct Delivery {
    slot: u32,
    pipe: Option<File>,
    output: Vec<u8>,
}

impl Delivery {
    /// Read what is waiting in the pipe; keep at most MAX_TEXT bytes. Returns false at end of
    /// file (or on an error, which ends the output the same way).
    fn read_some(&mut self) -> bool {
        let Some(pipe) = self.pipe.as_mut() else {
            return false;
        };
        let mut buffer = [0u8; 4096];
        // Bounded: a grandchild that keeps the pipe open and writes forever must not hold us.
        for _ in 0..64 {
            match pipe.read(&mut buffer) {
                Ok(0) => {
                    self.pipe = None;
                    return false;
                }
                Ok(n) => {
                    let room = spawnproto::MAX_TEXT.saturating_sub(self.output.len());
                    self.output.extend_from_slice(&buffer[..n.min(room)]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return true,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => {
                    self.pipe = None;
                    return false;
                }
            }
        }
        true
    }
}

/// The spawner's state.
pub struct Spawner {
    config: Config,
    layout: Layout,
    root: bool,
    my_uid: u32,
    queue_owner: u32,
    aliases: Cached<Aliases>,
    assign: Cached<Option<AssignDb>>,
    /// control/timeoutprogram: quill-local's limit for each program, when set.
    program_limit: Cached<Option<u64>>,
    directory: Directory,
    running: HashMap<i32, Delivery>,
    reports: Vec<u8>,
}

/// A failure that ends one delivery before it starts.
type Refusal = (Outcome, String);

fn temporary(text: impl Into<String>) -> Refusal {
    (Outcome::Temporary, text.into())
}

impl Spawner {
    /// Prepare: check that control/aliases and the queue are readable (a program must not
    /// run on a half-read configuration).
    pub fn new(config: Config) -> Result<Spawner> {
        let control = Control::new(&config.home);
        control.line("aliases")?;
        let layout = Layout::new(&config.home);
        std::fs::metadata(layout.mess())
            .map_err(|e| Error::io(format_args!("stat {}", layout.mess().display()), &e))?;
        // The owner of `queue/` itself, not of `queue/mess/`: HOME is root's, so only root can
        // replace `queue`, while its owner could replace `mess` with a link to a directory of
        // root's, whose files would then pass for messages (and go to a user on fd 0).
        let queue = std::fs::symlink_metadata(&layout.queue)
            .map_err(|e| Error::io(format_args!("stat {}", layout.queue.display()), &e))?;
        if !queue.is_dir() {
            return Err(Error::temporary(format!(
                "unable to use {}: it is not a directory (a link is not followed: mount the queue there, or make HOME the link)",
                layout.queue.display()
            )));
        }
        let queue_owner = queue.uid();
        let (_, euid) = crate::base::sys::uids();
        Ok(Spawner {
            aliases: Cached::new(aliases::aliases_path(&control)),
            assign: Cached::new(users::assign_db_path(&config.home)),
            program_limit: Cached::new(control.path("timeoutprogram")),
            directory: Directory::new(),
            layout,
            root: euid == 0,
            my_uid: euid,
            queue_owner,
            config,
            running: HashMap::new(),
            reports: Vec::new(),
        })
    }

    /// Serve requests from `input` until it ends and every delivery has finished, writing
    /// reports to `output`. An error is fatal (a broken pipe to quill-send, a mangled frame).
    pub fn run(&mut self, mut input: File, mut output: File) -> Result<()> {
        use nix::poll::{poll, PollFd, PollFlags, PollTimeout};
        let signals =
            crate::base::sys::signal_pipe(&[libc::SIGCHLD]).map_err(|e| Error::io("make the signal pipe", &e))?;
        let mut signals = File::from(signals);
        let mut reader = Reader::default();
        let mut input_open = true;
        let mut buffer = vec![0u8; 65536];
        while input_open || !self.running.is_empty() {
            let (signal_ready, input_ready, ready_pids) = {
                let mut fds = Vec::with_capacity(self.running.len() + 2);
                fds.push(PollFd::new(signals.as_fd(), PollFlags::POLLIN));
                // A closed input is left out: its hang-up would wake poll at once, forever.
                if input_open {
                    fds.push(PollFd::new(input.as_fd(), PollFlags::POLLIN));
                }
                let first_pipe = fds.len();
                let mut pids = Vec::with_capacity(self.running.len());
                for (&pid, delivery) in &self.running {
                    if let Some(pipe) = &delivery.pipe {
                        fds.push(PollFd::new(pipe.as_fd(), PollFlags::POLLIN));
                        pids.push(pid);
                    }
                }
                // With children about, wake now and then to reap even if a signal went astray.
                let timeout = if self.running.is_empty() { PollTimeout::NONE } else { PollTimeout::from(1000u16) };
                match poll(&mut fds, timeout) {
                    Ok(_) => {}
                    Err(nix::errno::Errno::EINTR) => continue,
                    Err(e) => return Err(Error::temporary(format!("unable to poll: {e}"))),
                }
                let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
                let ready_pids: Vec<i32> =
                    pids.iter().zip(&fds[first_pipe..]).filter(|(_, fd)| ready(fd)).map(|(&pid, _)| pid).collect();
                (ready(&fds[0]), input_open && ready(&fds[1]), ready_pids)
            };
            for pid in ready_pids {
                if let Some(delivery) = self.running.get_mut(&pid) {
                    delivery.read_some();
                }
            }
            if signal_ready {
                let mut drain = [0u8; 64];
                let _ = signals.read(&mut drain);
            }
            self.reap();
            if input_ready {
                match input.read(&mut buffer) {
                    Ok(0) => input_open = false,
                    Ok(n) => {
                        reader.push(&buffer[..n]);
                        while let Some(fields) = reader.next_frame() {
                            self.request(&fields);
                        }
                        if reader.overflowed() {
                            return Err(Error::temporary("unable to read requests: frame too long"));
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(Error::io("read requests", &e)),
                }
            }
            if !self.reports.is_empty() {
                output.write_all(&self.reports).map_err(|e| Error::io("write reports", &e))?;
                self.reports.clear();
            }
        }
        Ok(())
    }

    /// Handle one request frame: start its delivery, or report at once why not.
    fn request(&mut self, fields: &[Vec<u8>]) {
        let Some(request) = Request::decode(fields) else {
            // Without a slot there is nobody to answer; quill-send's pipe is broken.
            match fields.first().and_then(|f| std::str::from_utf8(f).ok()?.parse::<u32>().ok()) {
                Some(slot) => self.report(slot, Outcome::Temporary, b"quill-lspawn got a malformed request (#4.3.0)"),
                None => crate::base::log::warning("ignoring a malformed request without a slot"),
            }
            return;
        };
        if request.recipients.len() != 1 {
            let text = b"quill-lspawn takes one recipient per request (#4.3.0)";
            let results =
                request.recipients.iter().map(|_| spawnproto::Result::new(Outcome::Temporary, text.to_vec())).collect();
            self.reports.extend_from_slice(&Report { slot: request.slot, results }.encode());
            return;
        }
        if let Err((outcome, text)) = self.start(&request) {
            self.report(request.slot, outcome, text.as_bytes());
        }
    }

    fn report(&mut self, slot: u32, outcome: Outcome, text: &[u8]) {
        let results = vec![spawnproto::Result::new(outcome, text.to_vec())];
        self.reports.extend_from_slice(&Report { slot, results }.encode());
    }

    /// Check a request, find the recipient's user, and start quill-local for it.
    fn start(&mut self, request: &Request) -> std::result::Result<(), Refusal> {
        let recipient = &request.recipients[0];
        if !queuefile::valid_id(&request.id) {
            return Err(temporary("quill-lspawn got a bad queue id (#4.3.0)"));
        }
        if !address::is_clean(recipient)
            || !address::is_clean(&request.sender)
            || recipient.len() > address::MAX_ADDRESS
        {
            return Err((Outcome::Permanent, "bad recipient or sender address (#5.1.3)".into()));
        }
        if memchr::memchr(b'@', recipient).is_none() {
            return Err((Outcome::Permanent, "recipient has no domain (#5.1.3)".into()));
        }
        let (local, domain) = address::split(recipient);
        if local.is_empty() {
            return Err((Outcome::Permanent, "recipient has an empty local part (#5.1.1)".into()));
        }
        let (message, identity) = self.open_message(&request.id)?;
        let home = self.config.home.clone();
        let program_limit = *self
            .program_limit
            .refresh(|_| load_program_limit(&home))
            .map_err(|e| temporary(format!("{e} (#4.3.0)")))?;
        let aliases = self.aliases.refresh(load_aliases).map_err(|e| temporary(format!("{e} (#4.3.0)")))?;
        let my_uid = self.my_uid;
        let assign =
            self.assign.refresh(|path| load_assign(path, my_uid)).map_err(|e| temporary(format!("{e} (#4.3.0)")))?;
        self.directory.check();
        let mut forwards_only = false;
        let (user, alias_target) =
            match users::resolve_with(&home, local, aliases, assign.as_ref(), &mut self.directory) {
                Resolution::Alias { target } => {
                    let user = users::alias_user_with(&home, &mut self.directory).map_err(|e| temporary(e.message))?;
                    // An aliases file that someone else can change must not make the alias
                    // user run programs or write files: only its addresses are used.
                    forwards_only = aliases.distrust(user.uid, &[self.my_uid]).is_some();
                    (user, Some(target))
                }
                Resolution::User(user) | Resolution::AliasUser(user) => (user, None),
                Resolution::Temporary(text) => return Err(temporary(text)),
            };
        if user.uid == 0 {
            return Err(temporary("not allowed to deliver as root (#4.3.0)"));
        }
        if !self.root && user.uid != self.my_uid {
            return Err(temporary("quill-lspawn is not running as root (#4.3.0)"));
        }
        let mut command = Command::new(&self.config.local);
        command.arg0("quill-local");
        if let Some(seconds) = program_limit {
            command.arg("-t").arg(seconds.to_string());
        }
        if forwards_only {
            command.arg("-F");
        }
        let empty: &[u8] = b"";
        let (dash, ext, last) = match &alias_target {
            Some(target) => {
                command.arg("-A");
                (empty, empty, target.as_slice())
            }
            None => (user.dash.as_slice(), user.ext.as_slice(), self.config.default_delivery.as_slice()),
        };
        // The message's identity names its Maildir files, so that a retry finds what an
        // earlier attempt delivered; -r says that there may have been one.
        command.arg("-i").arg(identity.encode());
        if request.retry {
            command.arg("-r");
        }
        command.arg("--");
        for arg in [&user.user[..], user.home.as_os_str().as_bytes(), local, dash, ext, domain, &request.sender, last] {
            command.arg(OsStr::from_bytes(arg));
        }
        self.spawn(request.slot, command, &user, message)
    }

    /// Open `queue/mess/ID` (or `queue/todo/ID`), check it, and position it at the message.
    /// Returns it with the message's identity.
    fn open_message(&self, id: &[u8]) -> std::result::Result<(File, queuefile::Identity), Refusal> {
        let name = OsStr::from_bytes(id);
        let open =
            |dir: PathBuf| std::fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(dir.join(name));
        let mut file = match open(self.layout.mess()) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => open(self.layout.todo()),
            other => other,
        }
        .map_err(|e| temporary(format!("unable to open message {}: {e} (#4.3.0)", crate::base::log::safe(id))))?;
        let meta = file.metadata().map_err(|e| temporary(format!("unable to stat message: {e} (#4.3.0)")))?;
        // Only the queue's owner makes message files: anything else in there is not one.
        if !meta.is_file() || meta.uid() != self.queue_owner {
            return Err(temporary("message file is not a regular file owned by the queue (#4.3.0)"));
        }
        let (header, offset) =
            queuefile::read_header(&mut file).map_err(|e| temporary(format!("{} (#4.3.0)", e.message)))?;
        file.seek(SeekFrom::Start(offset))
            .map_err(|e| temporary(format!("unable to seek in message: {e} (#4.3.0)")))?;
        // The inode, not the name asked for: the identity must be the file's own.
        Ok((file, queuefile::Identity::of(meta.ino(), &header)))
    }

    /// Start quill-local: message on fd 0, one pipe on fd 1 and 2, credentials and home.
    fn spawn(
        &mut self,
        slot: u32,
        mut command: Command,
        user: &Assignment,
        message: File,
    ) -> std::result::Result<(), Refusal> {
        let (read, write) = nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)
            .map_err(|e| temporary(format!("unable to make a pipe: {e} (#4.3.0)")))?;
        let write_too: OwnedFd =
            write.try_clone().map_err(|e| temporary(format!("unable to dup a pipe: {e} (#4.3.0)")))?;
        // QUILL_HOME is passed on (not inherited): a forward from quill-local runs quill-queue,
        // which must write into this queue, not the compiled-in default.
        command
            .env_clear()
            .env("PATH", PATH)
            .env("QUILL_HOME", &self.config.home)
            .stdin(Stdio::from(message))
            .stdout(Stdio::from(write))
            .stderr(Stdio::from(write_too));
        if self.root {
            let groups = self.directory.groups(user)?;
            crate::base::sys::set_credentials(&mut command, user.uid, user.gid, groups);
            crate::base::sys::change_dir_last(&mut command, &user.home)
                .map_err(|e| temporary(format!("unable to use home {}: {e} (#4.3.0)", user.home.display())))?;
        } else {
            command.current_dir(&user.home);
        }
        let child = command.spawn().map_err(|e| {
            let name = crate::base::log::safe(&user.user);
            if !user.home.is_dir() {
                temporary(format!("home directory {} of {name} is missing (#4.2.1)", user.home.display()))
            } else {
                temporary(format!("unable to run quill-local as {name}: {e} (#4.3.0)"))
            }
        })?;
        // Dropping the Command closes our copies of the pipe's write end and of the message.
        drop(command);
        let pipe = File::from(read);
        let _ = nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(&pipe),
            nix::fcntl::FcntlArg::F_SETFL(nix::fcntl::OFlag::O_NONBLOCK),
        );
        self.running.insert(child.id() as i32, Delivery { slot, pipe: Some(pipe), output: Vec::new() });
        Ok(())
    }

    /// Collect every child that has ended and report it.
    fn reap(&mut self) {
        use nix::sys::wait::{waitpid, WaitPidFlag, WaitStatus};
        loop {
            let (pid, status) = match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::Exited(pid, code)) => (pid, Ok(code)),
                Ok(WaitStatus::Signaled(pid, signal, _)) => (pid, Err(signal as i32)),
                Ok(WaitStatus::StillAlive) | Err(_) => return,
                Ok(_) => continue,
            };
            let Some(mut delivery) = self.running.remove(&pid.as_raw()) else {
                continue;
            };
            // The child is gone, so all it wrote is in the pipe already.
            delivery.read_some();
            let (outcome, fallback) = match status {
                Ok(0) => (Outcome::Success, "delivered".to_string()),
                Ok(100) => (Outcome::Permanent, "quill-local failed permanently without saying why".to_string()),
                Ok(code) => (Outcome::Temporary, format!("quill-local exited {code} without saying why (#4.3.0)")),
                Err(signal) => (Outcome::Temporary, format!("quill-local was killed by signal {signal} (#4.3.0)")),
            };
            let text = if delivery.output.iter().all(u8::is_ascii_whitespace) {
                fallback.into_bytes()
            } else {
                delivery.output
            };
            self.report(delivery.slot, outcome, &text);
        }
    }
}

/// users/assign.db, if it is there. It says which uid runs each delivery, so it counts only
/// when nobody but root (or quill-lspawn's own uid, in an instance) can change it: checked
/// on the opened descriptor (crate::base::trust).
fn load_assign(path: &Path, my_uid: u32) -> Result<Option<AssignDb>> {
    let opened = match crate::base::trust::open(path) {
        Ok(Some(opened)) => opened,
        Ok(None) => return Ok(None),
        Err(e) => return Err(Error::io(format_args!("open {}", path.display()), &e)),
    };
    if let Some(why) = crate::base::trust::distrust(&opened.ownership, my_uid, &[]) {
        return Err(Error::temporary(format!("unable to trust {}: {why}; not using it", path.display())));
    }
    let mut bytes = Vec::with_capacity(opened.meta.len() as usize);
    (&opened.file).read_to_end(&mut bytes).map_err(|e| Error::io(format_args!("read {}", path.display()), &e))?;
    AssignDb::parse(bytes).map(Some)
}

/// control/timeoutprogram, if it is there (else quill-local's own default applies).
fn load_program_limit(home: &Path) -> Result<Option<u64>> {
    let control = Control::new(home);
    Ok(match control.line("timeoutprogram")? {
        None => None,
        Some(_) => Some(control.number("timeoutprogram", 0)?.max(1)),
    })
}

/// Load the aliases file and log what the parse only warned about (duplicate names).
fn load_aliases(path: &Path) -> Result<Aliases> {
    let aliases = Aliases::load(path)?;
    for warning in aliases.warnings() {
        crate::base::log::warning(warning);
    }
    Ok(aliases)
}
