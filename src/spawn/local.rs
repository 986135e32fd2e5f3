//! What is quill-lspawn's own in the spawner skeleton (spawn::engine, doc/quill-lspawn.8):
//! one recipient per request, found in the aliases, users/assign.db or the password file, and
//! delivered by quill-local running as that user: quill-local's code linked in, run by a
//! forked child that becomes the user and never execs ([`Config::linked`]), or a quill-local
//! program run with fork and exec when quill-lspawn is told to use another one (`-l`).
//! The user boundary is the child's setuid; doc/SECURITY.md has the argument.
#![forbid(unsafe_code)]

use crate::base::fail::{Enhanced, Error, Outcome, Result, Status};
use crate::base::privilege::Credentials;
use crate::base::sys::{self, Forked, ProcessTitle};
use crate::mail::address;
use crate::mail::aliases::{self, Aliases};
use crate::mail::control::Control;
use crate::mail::proto::local::Args;
use crate::mail::proto::spawn::{self as proto, Request};
use crate::mail::queuefile;
use crate::mail::users::{self, AssignDb, Assignment, PasswdEntry, PasswdSource, Resolution};
use crate::spawn::engine::{Ended, Exit, Kind, Message, Started};
use std::collections::HashMap;
use std::ffi::OsStr;
use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::MetadataExt;
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
    /// The quill-local program to run (with fork and exec) when [`Config::linked`] is None.
    pub local: PathBuf,
    /// quill-local's code, linked into quill-lspawn: a forked child runs it as the user, with
    /// no exec (`local::deliver_and_report`, handed over by quill-lspawn's main, as the spawn
    /// stage does not import the local stage). None when `-l` names another program.
    pub linked: Option<fn(&Args) -> Outcome>,
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
    /// Checked for this request already: the databases are stat'ed at a request's first
    /// look-up, and not at all for a recipient that users/assign or the aliases answer.
    checked: bool,
}

impl Directory {
    fn new() -> Directory {
        Directory {
            users: HashMap::new(),
            groups: HashMap::new(),
            stamps: None,
            born: std::time::Instant::now(),
            checked: false,
        }
    }

    /// A new request: the next look-up checks the databases again.
    fn new_request(&mut self) {
        self.checked = false;
    }

    /// Forget everything if the databases changed or the cache is old or big.
    fn check(&mut self) {
        if self.checked {
            return;
        }
        self.checked = true;
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
    fn groups(&mut self, user: &Assignment) -> std::result::Result<Vec<u32>, Status> {
        self.check();
        let key = (user.user.clone(), user.gid);
        if let Some(list) = self.groups.get(&key) {
            return Ok(list.clone());
        }
        let list = match std::ffi::CString::new(user.user.clone()) {
            Ok(name) => nix::unistd::getgrouplist(&name, nix::unistd::Gid::from_raw(user.gid))
                .map(|list| list.into_iter().map(|g| g.as_raw()).collect())
                .map_err(|e| {
                    temporary(format!("unable to list the groups of {}: {e}", crate::base::log::safe(&user.user)))
                })?,
            Err(_) => vec![user.gid],
        };
        self.groups.insert(key, list.clone());
        Ok(list)
    }
}

impl PasswdSource for Directory {
    fn user(&mut self, name: &str) -> Result<Option<PasswdEntry>> {
        self.check();
        if let Some(entry) = self.users.get(name) {
            return Ok(entry.clone());
        }
        // Failures are not cached: the next delivery asks again.
        let entry = users::System.user(name)?;
        self.users.insert(name.to_string(), entry.clone());
        Ok(entry)
    }
}

/// quill-lspawn's part: the caches it reads each request through, and who it runs as.
pub struct Local {
    config: Config,
    root: bool,
    my_uid: u32,
    aliases: Cached<Aliases>,
    assign: Cached<Option<AssignDb>>,
    /// control/timeoutprogram: quill-local's limit for each program, when set.
    program_limit: Cached<Option<u64>>,
    /// control/recipientdelimiter: which characters end the user part of a local part.
    delimiters: Cached<users::Delimiters>,
    directory: Directory,
    /// Where a forked child writes its name (`quill-local`) for ps; found at start.
    title: Option<ProcessTitle>,
    /// /proc/self/stat, kept open for the thread check before each fork (None: `-l`, no fork).
    self_stat: Option<sys::SelfStat>,
}

/// A temporary failure of the mail system (`4.3.0`), the default when unsure.
fn temporary(text: impl Into<String>) -> Status {
    Status::temporary(Enhanced::MAIL_SYSTEM, text)
}

impl Local {
    /// Prepare: check that control/aliases is readable (a program must not run on a
    /// half-read configuration).
    pub fn new(config: Config) -> Result<Local> {
        let control = Control::new(&config.home);
        control.line("aliases")?;
        let (_, euid) = crate::base::sys::uids();
        // Without the bounds a child keeps quill-lspawn's name in ps: worth a warning, no more.
        let title = match config.linked {
            Some(_) => ProcessTitle::find()
                .map_err(|e| crate::base::log::warning(&format!("unable to find the process title: {e}")))
                .ok(),
            None => None,
        };
        let self_stat = match config.linked {
            Some(_) => Some(sys::SelfStat::open().map_err(|e| Error::io("open /proc/self/stat", &e))?),
            None => None,
        };
        Ok(Local {
            title,
            self_stat,
            aliases: Cached::new(aliases::aliases_path(&control)),
            assign: Cached::new(users::assign_db_path(&config.home)),
            program_limit: Cached::new(control.path("timeoutprogram")),
            delimiters: Cached::new(control.path(users::DELIMITER_FILE)),
            directory: Directory::new(),
            root: euid == 0,
            my_uid: euid,
            config,
        })
    }

    /// Start quill-local: message on fd 0, the output pipe on fd 1 and 2, credentials and home.
    fn spawn(
        &mut self,
        mut command: Command,
        user: &Assignment,
        message: std::fs::File,
        output: OwnedFd,
    ) -> std::result::Result<Started<()>, Status> {
        let output_too: OwnedFd = output.try_clone().map_err(|e| temporary(format!("unable to dup a pipe: {e}")))?;
        // QUILL_HOME is passed on (not inherited): a forward from quill-local runs quill-queue,
        // which must write into this queue, not the compiled-in default.
        command
            .env_clear()
            .env("PATH", PATH)
            .env("QUILL_HOME", &self.config.home)
            .stdin(Stdio::from(message))
            .stdout(Stdio::from(output))
            .stderr(Stdio::from(output_too));
        if self.root {
            let groups = self.directory.groups(user)?;
            crate::base::sys::set_credentials(&mut command, user.uid, user.gid, groups);
            crate::base::sys::change_dir_last(&mut command, &user.home)
                .map_err(|e| temporary(format!("unable to use home {}: {e}", user.home.display())))?;
        } else {
            command.current_dir(&user.home);
        }
        let child = command.spawn().map_err(|e| {
            let name = crate::base::log::safe(&user.user);
            if !user.home.is_dir() {
                Status::temporary(
                    Enhanced::MAILBOX_DISABLED,
                    format!("home directory {} of {name} is missing", user.home.display()),
                )
            } else {
                temporary(format!("unable to run quill-local as {name}: {e}"))
            }
        })?;
        // Dropping the Command closes our copies of the pipe's write end and of the message.
        Ok(Started { pid: child.id() as i32, job: (), deadline: None })
    }

    /// Fork a child that becomes the user and runs quill-local's code (`deliver`) with `args`:
    /// the same credentials, descriptors, working directory and environment the quill-local
    /// program gets, without the exec. See [`child`] for what the child does, in order.
    fn fork(
        &mut self,
        deliver: fn(&Args) -> Outcome,
        args: Args,
        user: &Assignment,
        message: std::fs::File,
        output: OwnedFd,
    ) -> std::result::Result<Started<()>, Status> {
        // Everything the child needs is made here, in quill-lspawn, with its caches.
        let credentials = match self.root {
            true => Some(Credentials::new(user.uid, user.gid, &self.directory.groups(user)?)),
            false => None,
        };
        let environment = vec![
            (b"PATH".to_vec(), PATH.as_bytes().to_vec()),
            (b"QUILL_HOME".to_vec(), self.config.home.as_os_str().as_bytes().to_vec()),
        ];
        let plan = ChildPlan {
            deliver,
            args,
            credentials,
            environment,
            title: self.title,
            message: message.as_raw_fd(),
            output: output.as_raw_fd(),
        };
        let forked = match &self.self_stat {
            Some(stat) => stat.fork_single_threaded(),
            None => sys::fork_single_threaded(),
        };
        match forked {
            Ok(Forked::Child) => child(&plan),
            Ok(Forked::Parent(pid)) => {
                // Our copies of the message and of the pipe's write end go now: the pipe ends
                // when the child (and whatever it started) is done with it.
                drop(message);
                drop(output);
                Ok(Started { pid, job: (), deadline: None })
            }
            Err(e) => {
                Err(temporary(format!("unable to fork quill-local as {}: {e}", crate::base::log::safe(&user.user))))
            }
        }
    }
}

/// What a forked delivery child is given.
struct ChildPlan {
    deliver: fn(&Args) -> Outcome,
    args: Args,
    /// Whom to become (None: quill-lspawn is not root and runs as the user already).
    credentials: Option<Credentials>,
    /// The whole environment of the delivery.
    environment: Vec<(Vec<u8>, Vec<u8>)>,
    title: Option<ProcessTitle>,
    /// Descriptors of quill-lspawn's: the message, and the report pipe's write end.
    message: i32,
    output: i32,
}

/// The forked delivery child; it never returns into quill-lspawn's frames, and ends with
/// `_exit` (a panic too: exit 101, which quill-lspawn reports as temporary, as it would for
/// the quill-local program). In order: signals back to their defaults and an empty mask
/// (quill-lspawn's handlers write into its self-pipe); the message on fd 0 and the report
/// pipe on fd 1 and 2; every other descriptor closed (quill-send's request and report pipes,
/// the self-pipe, other deliveries' pipes, cached files); the name quill-local (ps, comm,
/// logs) and the environment emptied and set to PATH and QUILL_HOME only; then, as root,
/// supplementary groups, gid and uid with the check that root cannot come back (uid 0 is
/// refused here again); only then the home is entered and the message read, by quill-local's
/// code, as the user. The setuid also makes the kernel mark the process not dumpable, so
/// the user cannot read what it keeps of quill-lspawn's memory (ptrace, /proc/PID/mem, core).
fn child(plan: &ChildPlan) -> ! {
    // 101: what Rust's runtime exits with after a panic in main.
    let code = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| become_delivery(plan))).unwrap_or(101);
    sys::exit_now(code)
}

/// The steps of [`child`]; returns the exit code.
fn become_delivery(plan: &ChildPlan) -> u8 {
    // Before anything can be reported, a failure can only be an exit code: 111, temporary.
    let setup = || -> std::io::Result<()> {
        sys::reset_signals()?;
        sys::move_fd(plan.message, 0)?;
        sys::move_fd(plan.output, 1)?;
        sys::move_fd(plan.output, 2)?;
        sys::close_from(3)
    };
    if setup().is_err() {
        return Outcome::Temporary.exit_code();
    }
    crate::base::log::rename("quill-local");
    let names: Vec<std::ffi::OsString> = std::env::vars_os().map(|(name, _)| name).collect();
    for name in names {
        std::env::remove_var(name);
    }
    if let Some(title) = plan.title {
        let entries: Vec<Vec<u8>> =
            plan.environment.iter().map(|(name, value)| [&name[..], b"=", value].concat()).collect();
        let entries: Vec<&[u8]> = entries.iter().map(Vec::as_slice).collect();
        title.set(b"quill-local", &entries);
    }
    for (name, value) in &plan.environment {
        std::env::set_var(OsStr::from_bytes(name), OsStr::from_bytes(value));
    }
    if let Some(who) = &plan.credentials {
        if who.uid == 0 {
            crate::base::log::fatal("unable to deliver as root: not allowed");
            return Outcome::Temporary.exit_code();
        }
        if let Err(e) = crate::base::privilege::drop_to(who) {
            crate::base::log::fatal(&format!("unable to become uid {} gid {}: {e}", who.uid, who.gid));
            return Outcome::Temporary.exit_code();
        }
    }
    let home = Path::new(OsStr::from_bytes(&plan.args.home));
    if let Err(e) = std::env::set_current_dir(home) {
        // The texts quill-lspawn gives when it cannot start the quill-local program there.
        let name = crate::base::log::safe(&plan.args.user);
        let status = if !home.is_dir() {
            Status::temporary(
                Enhanced::MAILBOX_DISABLED,
                format!("home directory {} of {name} is missing", home.display()),
            )
        } else {
            temporary(format!("unable to enter home directory {} as {name}: {e}", home.display()))
        };
        println!("{status}");
        return status.outcome.exit_code();
    }
    let outcome = (plan.deliver)(&plan.args);
    outcome.exit_code()
}

impl Kind for Local {
    type Job = ();
    const MALFORMED: &'static str = "quill-lspawn got a malformed request";
    const ONE_RECIPIENT: bool = true;
    /// quill-send keeps this much of a report text anyway.
    const MAX_OUTPUT: usize = proto::MAX_TEXT;

    fn check(&mut self, request: &Request) -> std::result::Result<(), Status> {
        if request.recipients.len() != 1 {
            return Err(temporary("quill-lspawn takes one recipient per request"));
        }
        let recipient = &request.recipients[0];
        if !queuefile::valid_id(&request.id) {
            return Err(temporary("quill-lspawn got a bad queue id"));
        }
        let bad = |words: &str| Status::permanent(Enhanced::BAD_SYNTAX, words);
        if !address::is_clean(recipient)
            || !address::is_clean(&request.sender)
            || recipient.len() > address::MAX_ADDRESS
        {
            return Err(bad("bad recipient or sender address"));
        }
        if memchr::memchr(b'@', recipient).is_none() {
            return Err(bad("recipient has no domain"));
        }
        if address::split(recipient).0.is_empty() {
            return Err(Status::permanent(Enhanced::BAD_MAILBOX, "recipient has an empty local part"));
        }
        Ok(())
    }

    /// Find the recipient's user and start quill-local for it.
    fn start(
        &mut self,
        request: &Request,
        message: Message,
        output: OwnedFd,
    ) -> std::result::Result<Started<()>, Status> {
        let recipient = &request.recipients[0];
        let (local, domain) = address::split(recipient);
        let home = self.config.home.clone();
        let program_limit = *self.program_limit.refresh(|_| load_program_limit(&home)).map_err(temporary)?;
        let delimiters = self.delimiters.refresh(|_| users::Delimiters::load(&home)).map_err(temporary)?.clone();
        let aliases = self.aliases.refresh(load_aliases).map_err(temporary)?;
        let my_uid = self.my_uid;
        let assign = self.assign.refresh(|path| load_assign(path, my_uid)).map_err(temporary)?;
        self.directory.new_request();
        let mut forwards_only = false;
        let (user, alias_target) =
            match users::resolve_with(&home, local, aliases, assign.as_ref(), &delimiters, &mut self.directory) {
                Resolution::Alias { target } => {
                    let user = users::alias_user_with(&home, &mut self.directory)
                        .map_err(|e| Status::parse(Outcome::Temporary, &e.message))?;
                    // An aliases file that someone else can change must not make the alias
                    // user run programs or write files: only its addresses are used.
                    forwards_only = aliases.distrust(user.uid, &[self.my_uid]).is_some();
                    (user, Some(target))
                }
                Resolution::User(user) | Resolution::AliasUser(user) => (user, None),
                Resolution::Temporary(text) => return Err(Status::parse(Outcome::Temporary, &text)),
            };
        if user.uid == 0 {
            return Err(temporary("not allowed to deliver as root"));
        }
        if !self.root && user.uid != self.my_uid {
            return Err(temporary("quill-lspawn is not running as root"));
        }
        let (is_alias, dash, ext, default_delivery) = match alias_target {
            Some(target) => (true, Vec::new(), Vec::new(), target),
            None => (false, user.dash.clone(), user.ext.clone(), self.config.default_delivery.clone()),
        };
        let args = Args {
            dry_run: false,
            aliases: is_alias,
            forwards_only,
            program_time_limit: program_limit.map(std::time::Duration::from_secs),
            user: user.user.clone(),
            home: user.home.as_os_str().as_bytes().to_vec(),
            local: local.to_vec(),
            dash,
            ext,
            domain: domain.to_vec(),
            sender: request.sender.clone(),
            default_delivery,
            // The message's identity names its Maildir files, so that a retry finds what an
            // earlier attempt delivered; `retry` says that there may have been one.
            identity: Some(message.identity),
            retry: request.retry,
        };
        if let Some(deliver) = self.config.linked {
            return self.fork(deliver, args, &user, message.file, output);
        }
        let mut command = Command::new(&self.config.local);
        command.arg0("quill-local");
        for word in args.words() {
            command.arg(OsStr::from_bytes(&word));
        }
        self.spawn(command, &user, message.file, output)
    }

    fn overdue(&mut self, _slot: u32, _job: &()) {}

    /// quill-local's exit status is the outcome; what it wrote is the text, or a fallback
    /// when it wrote nothing.
    fn finish(&mut self, ended: Ended<()>) -> Vec<proto::Result> {
        let fallback = match ended.exit {
            Exit::Code(0) => Status::success("delivered"),
            Exit::Code(100) => {
                // Without a code, as it has always read (quill-local's own words carry theirs).
                let words = b"quill-local failed permanently without saying why";
                return vec![text_or(ended.output, Outcome::Permanent, words)];
            }
            Exit::Code(code) => temporary(format!("quill-local exited {code} without saying why")),
            Exit::Signal(signal) => temporary(format!("quill-local was killed by signal {signal}")),
        };
        vec![text_or(ended.output, fallback.outcome, fallback.to_string().as_bytes())]
    }
}

/// quill-local's own words when it wrote any, else `fallback`.
fn text_or(output: Vec<u8>, outcome: Outcome, fallback: &[u8]) -> proto::Result {
    let text = if output.iter().all(u8::is_ascii_whitespace) { fallback.to_vec() } else { output };
    proto::Result::new(outcome, text)
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
