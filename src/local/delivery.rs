//! quill-local's delivery logic (doc/quill-local.8): choose the instructions for one local
//! address (dot file, `.forward`, default delivery, or an aliases right-hand side), check
//! for loops, and carry them out in order — Maildir, mbox, program — collecting forwards
//! into one injection at the end.
//!
//! The message is fd 0, a queue file positioned at the first byte of the message; the bytes
//! before that position are the queue's own header (other recipients' addresses) and never
//! reach a mailbox, a program or a forward. Everything reads the message with positioned
//! reads from that start, so no instruction depends on another's file position.
#![forbid(unsafe_code)]

use crate::base::fail::{Enhanced, Error, Status};
use crate::local::Result;
use crate::mail::dotqmail::{self, Instruction, Item};
use crate::mail::envelope::Envelope;
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::AsFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileExt, PermissionsExt};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

/// How much of the message is read into memory at once: the whole of a typical message, so
/// that each delivery writes it from memory; the header scan for loops looks no further.
pub const HEAD_MAX: usize = 1024 * 1024;
/// More `Received:` and `Delivered-To:` lines than this: the message is looping.
pub const MAX_HOPS: usize = 100;
/// The largest dot file, `.forward` or include file read.
pub const MAX_FILE: u64 = 1024 * 1024;
/// How deep `:include:` files may nest.
pub const MAX_INCLUDE_DEPTH: usize = 4;
/// The most instructions one delivery may expand to (include files included).
pub const MAX_INSTRUCTIONS: usize = 1000;
/// A program delivery is killed (with its process group) after this long, and the delivery
/// deferred, unless quill-lspawn passes another limit (`-t`, from control/timeoutprogram).
/// Postfix's command_time_limit: long enough for any filter that does its work, short enough
/// that a program that hangs gives its local slot back within the hour.
pub const PROGRAM_TIME_LIMIT: Duration = Duration::from_secs(1000);
/// The longest file name (one path component) the usual file systems take.
const NAME_MAX: usize = 255;
/// How many refused lines of an untrusted file are named one by one in the log.
const REFUSED_SHOWN: usize = 3;
/// Program exit codes that mean a permanent failure (besides 100): the sysexits a mail
/// program uses for "bad address, bad data, software error, configuration" and qmail's 112.
const PERMANENT_EXITS: [i32; 8] = [100, 64, 65, 70, 76, 77, 78, 112];

pub use crate::mail::proto::local::Args;

/// The message on fd 0.
pub struct Message {
    file: File,
    start: u64,
    len: u64,
    head: Vec<u8>,
}

impl Message {
    /// Take fd 0 (a copy of it, close-on-exec, so no program inherits the queue file) and
    /// remember where the message starts.
    pub fn from_stdin() -> Result<Message> {
        let unreadable =
            |e: io::Error| Status::temporary(Enhanced::MAIL_SYSTEM, format!("Unable to read message: {e}."));
        let fd = io::stdin().as_fd().try_clone_to_owned().map_err(unreadable)?;
        let mut file = File::from(fd);
        let start = io::Seek::stream_position(&mut file).map_err(unreadable)?;
        let size = file.metadata().map_err(unreadable)?.len();
        let len = size.saturating_sub(start);
        let mut head = vec![0u8; len.min(HEAD_MAX as u64) as usize];
        let mut filled = 0;
        while filled < head.len() {
            match file.read_at(&mut head[filled..], start + filled as u64) {
                Ok(0) => break,
                Ok(n) => filled += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(unreadable(e)),
            }
        }
        head.truncate(filled);
        Ok(Message { file, start, len, head })
    }

    /// A reader over the message from its first byte.
    pub fn reader(&self) -> MessageReader<'_> {
        MessageReader { message: self, pos: 0 }
    }
}

/// Reads the message: from memory as far as it was read, then with positioned reads.
pub struct MessageReader<'a> {
    message: &'a Message,
    pos: u64,
}

impl Read for MessageReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let m = self.message;
        if (self.pos as usize) < m.head.len() {
            let rest = &m.head[self.pos as usize..];
            let n = rest.len().min(buf.len());
            buf[..n].copy_from_slice(&rest[..n]);
            self.pos += n as u64;
            return Ok(n);
        }
        if self.pos >= m.len {
            return Ok(0);
        }
        let want = ((m.len - self.pos) as usize).min(buf.len());
        let n = m.file.read_at(&mut buf[..want], m.start + self.pos)?;
        self.pos += n as u64;
        Ok(n)
    }
}

/// Fail permanently if the message already carries our Delivered-To line (matched without
/// regard to case, surrounding blanks ignored) or more than [`MAX_HOPS`] Received and
/// Delivered-To lines. Only the header is read, and no further than [`HEAD_MAX`].
pub fn check_loop(head: &[u8], recipient: &[u8]) -> Result<()> {
    let mut hops = 0;
    for line in head.split(|&b| b == b'\n') {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            break;
        }
        let name_end = match memchr::memchr(b':', line) {
            Some(n) => n,
            None => continue,
        };
        let name = &line[..name_end];
        if name.eq_ignore_ascii_case(b"received") {
            hops += 1;
        } else if name.eq_ignore_ascii_case(b"delivered-to") {
            hops += 1;
            let value = line[name_end + 1..].trim_ascii();
            if value.eq_ignore_ascii_case(recipient) {
                return Err(Status::permanent(
                    Enhanced::LOOP,
                    "This message is looping: it already has my Delivered-To line.",
                ));
            }
        }
        if hops > MAX_HOPS {
            return Err(Status::permanent(
                Enhanced::LOOP,
                format!("This message is looping: it has more than {MAX_HOPS} Received and Delivered-To lines."),
            ));
        }
    }
    Ok(())
}

/// The chosen instructions and where they came from.
#[derive(Clone, Debug, Default)]
pub struct Plan {
    /// What to do, in order.
    pub instructions: Vec<Instruction>,
    /// DEFAULT: the part of the extension a `-default` file matched.
    pub default: Option<Vec<u8>>,
}

fn show(bytes: &[u8]) -> String {
    crate::base::log::safe(bytes)
}

/// A dot file, `.forward` or include file as read.
struct InstructionsFile {
    text: Vec<u8>,
    mode: u32,
    /// Why its programs, files and mailboxes may not be used (someone other than root or the
    /// delivering user can change it), or None.
    distrust: Option<String>,
}

/// Read a dot file, `.forward` or include file; None if it does not exist (or its name is
/// too long to exist). A file others may write to (group or world, or only world for
/// `world_only`) is refused: someone else could make the user run programs. Owner and mode
/// come from the opened descriptor (crate::base::trust).
fn read_instructions_file(path: &Path, world_only: bool) -> Result<Option<InstructionsFile>> {
    let shown = show(path.as_os_str().as_bytes());
    let opened = match crate::base::trust::open(path) {
        Ok(Some(opened)) => opened,
        Ok(None) => return Ok(None),
        // A name built from an address can be too long for any file: "no such file" is the
        // true answer, not "try again" (a week of deferrals, then a bounce).
        Err(e) if e.raw_os_error() == Some(libc::ENAMETOOLONG) => return Ok(None),
        Err(e) => return Err(Status::temporary(Enhanced::MAILBOX_DISABLED, format!("Unable to open {shown}: {e}."))),
    };
    let mode = opened.meta.permissions().mode();
    let bad_bits = if world_only { 0o002 } else { 0o022 };
    if mode & bad_bits != 0 {
        let who = if world_only { "world" } else { "group- or world" };
        return Err(Status::temporary(Enhanced::SECURITY, format!("Uh-oh: {shown} is {who}-writable; not using it.")));
    }
    let size = opened.meta.len();
    if size > MAX_FILE {
        return Err(Status::temporary(Enhanced::SECURITY, format!("Uh-oh: {shown} is larger than {MAX_FILE} bytes.")));
    }
    let distrust = crate::base::trust::distrust(&opened.ownership, crate::base::sys::uids().1, &[]);
    let mut text = Vec::with_capacity(size as usize);
    Read::by_ref(&mut &opened.file)
        .take(MAX_FILE)
        .read_to_end(&mut text)
        .map_err(|e| Status::temporary(Enhanced::MAILBOX_DISABLED, format!("Unable to read {shown}: {e}.")))?;
    Ok(Some(InstructionsFile { text, mode, distrust }))
}

/// A dot file or `.forward` speaks for the user only when nobody else can change it: else
/// the delivery waits (as for a group-writable file) until the user or the admin fixes it.
fn owned(name: &[u8], file: &InstructionsFile) -> Result<()> {
    match &file.distrust {
        Some(why) => Err(Status::temporary(
            Enhanced::SECURITY,
            format!("Uh-oh: {} is not the user's: {why}; not using it.", show(name)),
        )),
        None => Ok(()),
    }
}

fn os_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// Decide what to do with the message (qmail.md §5.1, plus `.forward` and `-A`).
pub fn choose(args: &Args) -> Result<Plan> {
    if args.aliases {
        let mut instructions = Vec::new();
        let distrust = args
            .forwards_only
            .then(|| "the aliases file is not root's or the alias user's alone (quill-lspawn -F)".to_string());
        let mut list = List { args, origin: "the aliases entry".into(), distrust, refused: 0 };
        list.expand(&args.default_delivery, 0, &mut instructions)?;
        list.summary();
        return nonempty(Plan { instructions, default: None }, "the aliases entry");
    }
    if !dotqmail::safe_ext(&args.ext) {
        return Err(Status::permanent(Enhanced::BAD_MAILBOX, "Sorry, this address cannot name a mailbox here."));
    }
    if args.dash.is_empty() {
        let mut name = b".qmail".to_vec();
        name.extend_from_slice(&dotqmail::file_form(&args.ext));
        if let Some(file) = read_instructions_file(os_path(&name), false)? {
            if !file.text.is_empty() {
                owned(&name, &file)?;
                return dot_file_plan(&name, &file.text, file.mode, None);
            }
        }
        if let Some(file) = read_instructions_file(Path::new(".forward"), false)? {
            owned(b".forward", &file)?;
            let mut instructions = Vec::new();
            let mut list = List { args, origin: ".forward".into(), distrust: None, refused: 0 };
            list.expand(&file.text, 0, &mut instructions)?;
            list.summary();
            if !instructions.is_empty() {
                return Ok(Plan { instructions, default: None });
            }
        }
        return default_plan(args, None);
    }
    for (name, default) in dotqmail::candidates(&args.dash, &args.ext) {
        if let Some(file) = read_instructions_file(os_path(&name), false)? {
            owned(&name, &file)?;
            if file.text.is_empty() {
                return default_plan(args, default);
            }
            return dot_file_plan(&name, &file.text, file.mode, default);
        }
    }
    Err(Status::permanent(Enhanced::BAD_MAILBOX, "Sorry, no mailbox here by that name."))
}

fn nonempty(plan: Plan, origin: &str) -> Result<Plan> {
    if plan.instructions.is_empty() {
        return Err(Status::temporary(
            Enhanced::MISCONFIGURED,
            format!("Uh-oh: {origin} holds no delivery instructions."),
        ));
    }
    Ok(plan)
}

fn default_plan(args: &Args, default: Option<Vec<u8>>) -> Result<Plan> {
    let instructions = dotqmail::parse_dotqmail(&args.default_delivery).instructions;
    nonempty(Plan { instructions, default }, "the default delivery")
}

fn dot_file_plan(name: &[u8], text: &[u8], mode: u32, default: Option<Vec<u8>>) -> Result<Plan> {
    let file = dotqmail::parse_dotqmail(text);
    let shown = show(name);
    if file.first_line_blank {
        return Err(Status::temporary(Enhanced::MAILBOX_DISABLED, format!("Uh-oh: first line of {shown} is blank.")));
    }
    // The owner-execute bit (or a `+` line) marks a forward-only file, e.g. one a mailing
    // list manager rewrites: it must never make the user run a program or write a file.
    if (file.forward_only || mode & 0o100 != 0) && !file.instructions.iter().all(Instruction::is_forward) {
        return Err(Status::temporary(
            Enhanced::SECURITY,
            format!("Uh-oh: {shown} is forward-only but has a program or mailbox line."),
        ));
    }
    Ok(Plan { instructions: file.instructions, default })
}

/// A sendmail-style list being expanded: `.forward`, an aliases right-hand side, and the
/// `:include:` files they name.
struct List<'a> {
    args: &'a Args,
    /// Where the text being expanded came from, for messages.
    origin: String,
    /// Why programs, files and mailboxes from here are not used (sendmail's rule: an include
    /// file honours them only when it belongs to root or to the delivering user), or None.
    /// It holds for every include file reached from an untrusted one, too.
    distrust: Option<String>,
    /// Lines refused so far.
    refused: usize,
}

impl List<'_> {
    /// Expand `text` into instructions: `:include:` files (read as the current user, nested
    /// at most [`MAX_INCLUDE_DEPTH`] deep), `\NAME` (the user's own mailbox when NAME is the
    /// user, else an address).
    fn expand(&mut self, text: &[u8], depth: usize, out: &mut Vec<Instruction>) -> Result<()> {
        let args = self.args;
        let items = dotqmail::parse_sendmail(text).map_err(|_| {
            Status::temporary(Enhanced::SECURITY, format!("Uh-oh: {} has an unbalanced quote.", self.origin))
        })?;
        for item in items {
            match item {
                Item::Do(instruction) if instruction.is_forward() || self.distrust.is_none() => out.push(instruction),
                Item::Do(instruction) => self.refuse(&instruction),
                Item::Local(name) => {
                    let own = name.eq_ignore_ascii_case(&args.user) || name.eq_ignore_ascii_case(&args.local);
                    if own && !args.aliases {
                        out.extend(dotqmail::parse_dotqmail(&args.default_delivery).instructions);
                    } else {
                        out.push(Instruction::Forward(name));
                    }
                }
                Item::Include(path) => {
                    let shown = show(&path);
                    if depth + 1 > MAX_INCLUDE_DEPTH {
                        return Err(Status::temporary(
                            Enhanced::SECURITY,
                            format!("Uh-oh: include files nest too deep at {shown}."),
                        ));
                    }
                    let file = read_instructions_file(os_path(&path), true)?.ok_or_else(|| {
                        Status::temporary(
                            Enhanced::MAILBOX_DISABLED,
                            format!("Unable to open include file {shown}: it does not exist."),
                        )
                    })?;
                    let outer = (self.origin.clone(), self.distrust.clone());
                    self.origin = shown;
                    if self.distrust.is_none() {
                        self.distrust = file.distrust;
                    }
                    let expanded = self.expand(&file.text, depth + 1, out);
                    (self.origin, self.distrust) = outer;
                    expanded?;
                }
            }
            if out.len() > MAX_INSTRUCTIONS {
                return Err(Status::temporary(
                    Enhanced::SECURITY,
                    format!("Uh-oh: more than {MAX_INSTRUCTIONS} delivery instructions."),
                ));
            }
        }
        Ok(())
    }

    /// Leave out a program, file or mailbox line of an untrusted file, and say so (the first
    /// few by name; [`List::summary`] counts the rest).
    fn refuse(&mut self, instruction: &Instruction) {
        self.refused += 1;
        if self.refused > REFUSED_SHOWN {
            return;
        }
        let line = match instruction {
            Instruction::Program(command) => format!("run |{}", show(command)),
            Instruction::Mbox(path) | Instruction::Maildir(path) => format!("deliver to {}", show(path)),
            Instruction::Forward(address) => format!("forward to {}", show(address)),
        };
        let why = self.distrust.as_deref().unwrap_or("");
        crate::base::log::warning(&format!(
            "unable to {line} from {}: {why}; only its addresses are used",
            self.origin
        ));
    }

    /// Say how many refused lines were not named.
    fn summary(&self) {
        if self.refused > REFUSED_SHOWN {
            crate::base::log::warning(&format!(
                "unable to use {} more program, file or mailbox lines from untrusted include files",
                self.refused - REFUSED_SHOWN
            ));
        }
    }
}

/// The text after the `n`th dash (EXT2…EXT4), empty when there are fewer dashes.
fn after_dashes(ext: &[u8], n: usize) -> &[u8] {
    let mut rest = ext;
    for _ in 0..n {
        match memchr::memchr(b'-', rest) {
            Some(i) => rest = &rest[i + 1..],
            None => return b"",
        }
    }
    rest
}

/// The domain without its last `n` components (HOST2…HOST4); a name with fewer dots keeps
/// what is left.
fn without_components(host: &[u8], n: usize) -> &[u8] {
    let mut rest = host;
    for _ in 0..n {
        if let Some(i) = memchr::memrchr(b'.', rest) {
            rest = &rest[..i];
        }
    }
    rest
}

/// What carrying out the plan did.
#[derive(Debug, Default)]
struct Counts {
    files: u32,
    forwards: u32,
    programs: u32,
}

/// One delivery in progress.
pub struct Delivery<'a> {
    args: &'a Args,
    plan: &'a Plan,
    message: Arc<Message>,
    recipient: Vec<u8>,
    /// `Return-Path:` and `Delivered-To:` lines, for mailboxes.
    prefix: Vec<u8>,
    newsender: Vec<u8>,
    /// The name that makes Maildir deliveries happen once, when the message is named.
    exact: Option<crate::local::maildir::Exact>,
}

impl<'a> Delivery<'a> {
    /// Prepare a delivery of `message` by `plan`.
    pub fn new(args: &'a Args, plan: &'a Plan, message: Arc<Message>) -> Delivery<'a> {
        let recipient = args.recipient();
        let mut prefix = rpline(&args.sender);
        prefix.extend_from_slice(&dtline(&recipient));
        let needs_sender =
            plan.instructions.iter().any(|i| matches!(i, Instruction::Forward(_) | Instruction::Program(_)));
        let newsender = if needs_sender { newsender(args) } else { args.sender.clone() };
        let exact = args.identity.map(|identity| crate::local::maildir::Exact::new(&identity, &recipient, args.retry));
        Delivery { args, plan, message, recipient, prefix, newsender, exact }
    }

    /// Carry out every instruction; forwards go out together at the end. Returns the report.
    pub fn run(&self) -> Result<String> {
        // Resolve every address and path first: a broken line fails the delivery before
        // any mailbox got a copy that the retry would duplicate.
        self.describe()?;
        let mut counts = Counts::default();
        let mut targets: Vec<Vec<u8>> = Vec::new();
        for instruction in &self.plan.instructions {
            match instruction {
                Instruction::Forward(address) => {
                    targets.push(self.target(address)?);
                    counts.forwards += 1;
                }
                Instruction::Maildir(path) => {
                    let (path, substituted) = self.substitute(path)?;
                    crate::local::maildir::deliver(
                        os_path(&path),
                        &self.prefix,
                        &mut self.message.reader(),
                        substituted,
                        self.exact.as_ref(),
                    )?;
                    counts.files += 1;
                }
                Instruction::Mbox(path) => {
                    let (path, _) = self.substitute(path)?;
                    let from = ufline(&self.args.sender, crate::base::date::now());
                    crate::local::mbox::deliver(os_path(&path), &from, &self.prefix, &mut self.message.reader())?;
                    counts.files += 1;
                }
                Instruction::Program(command) => {
                    counts.programs += 1;
                    if self.program(command)? == Flow::Stop {
                        break;
                    }
                }
            }
        }
        let mut report = format!("did {}+{}+{}", counts.files, counts.forwards, counts.programs);
        if !targets.is_empty() {
            let qp = self.forward(targets)?;
            report.push_str(&format!(" qp {qp}"));
        }
        Ok(report)
    }

    /// What `-n` prints: one line per instruction, after substitution.
    pub fn describe(&self) -> Result<String> {
        let mut text = String::new();
        for instruction in &self.plan.instructions {
            let line = match instruction {
                Instruction::Forward(address) => {
                    format!("forward {}", show(&self.target(address)?))
                }
                Instruction::Maildir(path) => {
                    format!("maildir {}", show(&self.substitute(path)?.0))
                }
                Instruction::Mbox(path) => format!("mbox {}", show(&self.substitute(path)?.0)),
                Instruction::Program(command) => format!("program {}", show(command)),
            };
            text.push_str(&line);
            text.push('\n');
        }
        Ok(text)
    }

    fn substitute(&self, path: &[u8]) -> Result<(Vec<u8>, bool)> {
        let values =
            dotqmail::Values { default: self.plan.default.as_deref(), ext: &self.args.ext, local: &self.args.local };
        let (result, substituted) = dotqmail::substitute(path, &values).map_err(|bad| {
            Status::permanent(
                Enhanced::BAD_MAILBOX,
                format!("Sorry, the address gives ${{{}}} no usable value for {}.", bad.name, show(path)),
            )
        })?;
        // A name built from the address that no file system takes (ENAMETOOLONG) names no
        // mailbox: a permanent "no such address", not a week of deferrals.
        if substituted && result.split(|&b| b == b'/').any(|part| part.len() > NAME_MAX) {
            return Err(Status::permanent(
                Enhanced::BAD_MAILBOX,
                "Sorry, no mailbox here by that name (the name is too long).",
            ));
        }
        Ok((result, substituted))
    }

    /// A forward target: an address without `@` is at the recipient's domain.
    fn target(&self, address: &[u8]) -> Result<Vec<u8>> {
        let mut target = address.to_vec();
        if memchr::memchr(b'@', &target).is_none() && !self.args.domain.is_empty() {
            target.push(b'@');
            target.extend_from_slice(&self.args.domain);
        }
        if target.len() > crate::mail::address::MAX_ADDRESS || !crate::mail::address::is_clean(&target) {
            return Err(Status::permanent(
                Enhanced::BAD_SYNTAX,
                format!("Unable to forward to {}: bad address.", show(&target)),
            ));
        }
        Ok(target)
    }

    /// Inject one copy for all targets, with our Delivered-To line on top.
    fn forward(&self, targets: Vec<Vec<u8>>) -> Result<u32> {
        let mut submission = crate::mail::submit::Submission::start().map_err(|e| forward_failure(&e))?;
        submission.write(&dtline(&self.recipient));
        let mut reader = self.message.reader();
        let mut chunk = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut chunk) {
                Ok(0) => break,
                Ok(n) => submission.write(&chunk[..n]),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Status::temporary(Enhanced::MAIL_SYSTEM, format!("Unable to read message: {e}.")))
                }
            }
        }
        let envelope = Envelope { sender: self.newsender.clone(), recipients: targets };
        submission.finish(&envelope).map(|accepted| accepted.pid).map_err(|e| forward_failure(&e))
    }

    /// Run `/bin/sh -c command` in the home directory with the message on a pipe.
    fn program(&self, command: &[u8]) -> Result<Flow> {
        let mut child = self
            .command(command)
            .spawn()
            .map_err(|e| Status::temporary(Enhanced::MAIL_SYSTEM, format!("Unable to run /bin/sh: {e}.")))?;
        // The program gets only the message bytes, never the queue file itself. The feeder is
        // not waited for: a background process of the program may hold the pipe open without
        // reading, and must not hold up the delivery (it gets EPIPE when we exit).
        if let Some(mut stdin) = child.stdin.take() {
            let message = Arc::clone(&self.message);
            std::thread::spawn(move || {
                let _ = io::copy(&mut message.reader(), &mut stdin);
            });
        }
        let group = nix::unistd::Pid::from_raw(child.id() as i32);
        let limit = self.args.program_time_limit.unwrap_or(PROGRAM_TIME_LIMIT);
        let (done, finished) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            if finished.recv_timeout(limit).is_err() {
                let _ = nix::sys::signal::killpg(group, nix::sys::signal::Signal::SIGKILL);
                return true;
            }
            false
        });
        let status = child.wait();
        let _ = done.send(());
        let timed_out = watchdog.join().unwrap_or(false);
        let status = status
            .map_err(|e| Status::temporary(Enhanced::MAIL_SYSTEM, format!("Unable to wait for the program: {e}.")))?;
        if timed_out {
            return Err(Status::temporary(
                Enhanced::MAIL_SYSTEM,
                format!("Program ran longer than {} seconds and was killed with its process group.", limit.as_secs()),
            ));
        }
        match status.code() {
            Some(0) => Ok(Flow::Continue),
            Some(99) => Ok(Flow::Stop),
            Some(code) if PERMANENT_EXITS.contains(&code) => {
                Err(Status::permanent(Enhanced::MAILBOX, format!("Program failed permanently (exit {code}).")))
            }
            Some(code) => {
                Err(Status::temporary(Enhanced::MAILBOX, format!("Program failed temporarily (exit {code}).")))
            }
            None => Err(Status::temporary(
                Enhanced::MAIL_SYSTEM,
                format!("Program was killed by signal {}.", status.signal().unwrap_or(0)),
            )),
        }
    }

    /// The shell command with the qmail environment (qmail.md §5.3); the rest of the
    /// environment (PATH, QMAILQUEUE, …) is what quill-lspawn gave us.
    fn command(&self, command: &[u8]) -> Command {
        let a = self.args;
        let mut c = Command::new("/bin/sh");
        c.arg("-c").arg(OsStr::from_bytes(command));
        c.stdin(Stdio::piped());
        // A new process group, so a program that runs too long is killed with its children.
        c.process_group(0);
        c.env_remove("DEFAULT").env_remove("QMAILINJECT");
        let now = crate::base::date::now();
        let vars: [(&str, &[u8]); 18] = [
            ("USER", &a.user),
            ("HOME", &a.home),
            ("LOCAL", &a.local),
            ("HOST", &a.domain),
            ("HOST2", without_components(&a.domain, 1)),
            ("HOST3", without_components(&a.domain, 2)),
            ("HOST4", without_components(&a.domain, 3)),
            ("RECIPIENT", &self.recipient),
            ("SENDER", &a.sender),
            ("NEWSENDER", &self.newsender),
            ("EXT", &a.ext),
            ("EXT2", after_dashes(&a.ext, 1)),
            ("EXT3", after_dashes(&a.ext, 2)),
            ("EXT4", after_dashes(&a.ext, 3)),
            ("DTLINE", &dtline(&self.recipient)),
            ("RPLINE", &rpline(&a.sender)),
            ("UFLINE", &ufline(&a.sender, now)),
            ("DEFAULT", self.plan.default.as_deref().unwrap_or(b"")),
        ];
        for (name, value) in vars {
            if name == "DEFAULT" && self.plan.default.is_none() {
                continue;
            }
            c.env(name, OsStr::from_bytes(value));
        }
        c
    }
}

/// A forward the queue program refused (or could not take): its words and, when they end in
/// one, its status code, read back with [`Status::parse`]; words without a code end in a
/// period like every sentence of quill-local's. The queue program's own exit code is not
/// ours: quill-local exits 0, 100 or 111.
fn forward_failure(error: &Error) -> Status {
    let status = Status::from(error);
    let coded = status.text != error.message.trim_end();
    let words = if coded { status.text } else { format!("{}.", status.text) };
    Status::new(status.outcome, status.code, format!("Unable to forward message: {words}"))
}

/// After a program: go on, or (exit 99) skip the remaining lines.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Flow {
    Continue,
    Stop,
}

/// `Delivered-To: local@domain` and a newline (controls in the address shown as `?`).
pub fn dtline(recipient: &[u8]) -> Vec<u8> {
    let mut line = b"Delivered-To: ".to_vec();
    line.extend_from_slice(&crate::mail::header::field_safe(recipient));
    line.push(b'\n');
    line
}

/// `Return-Path: <sender>` and a newline. The sender is whatever a client gave at MAIL FROM or
/// a local user to sendmail -f; controls in it are shown as `?`.
pub fn rpline(sender: &[u8]) -> Vec<u8> {
    let mut line = b"Return-Path: <".to_vec();
    line.extend_from_slice(&crate::mail::header::field_safe(sender));
    line.extend_from_slice(b">\n");
    line
}

/// The mbox separator line `From SENDER DATE` and a newline; MAILER-DAEMON for the empty
/// sender, blanks in the sender written as `_` so that readers find the date.
pub fn ufline(sender: &[u8], time: u64) -> Vec<u8> {
    let mut line = b"From ".to_vec();
    if sender.is_empty() {
        line.extend_from_slice(b"MAILER-DAEMON");
    } else {
        // Blanks would split the line for mbox readers; controls are shown as `?`.
        let shown = crate::mail::header::field_safe(sender);
        line.extend(shown.iter().map(|&b| if b == b' ' || b == b'\t' { b'_' } else { b }));
    }
    line.push(b' ');
    line.extend_from_slice(crate::base::date::asctime(time).as_bytes());
    line.push(b'\n');
    line
}

/// The envelope sender for forwards and NEWSENDER: the original one, or `LOCAL-owner@DOMAIN`
/// when `.qmailDASHEXT-owner` exists (qmail's list-owner convention). Bounces keep their
/// empty sender, double bounces `#@[]`.
fn newsender(args: &Args) -> Vec<u8> {
    if args.aliases || args.sender.is_empty() || args.sender == b"#@[]" {
        return args.sender.clone();
    }
    let mut owner = b".qmail".to_vec();
    owner.extend_from_slice(&args.dash);
    owner.extend_from_slice(&dotqmail::file_form(&args.ext));
    owner.extend_from_slice(b"-owner");
    if dotqmail::safe_ext(&args.ext) && os_path(&owner).exists() {
        let mut sender = args.local.clone();
        sender.extend_from_slice(b"-owner@");
        sender.extend_from_slice(&args.domain);
        return sender;
    }
    args.sender.clone()
}

/// The home directory must be ours to trust: not writable by everyone, not sticky (qmail's
/// sign that the user is editing the dot files).
pub fn enter_home(home: &[u8]) -> Result<()> {
    let path = os_path(home);
    std::env::set_current_dir(path).map_err(|e| {
        Status::temporary(Enhanced::MAIL_SYSTEM, format!("Unable to switch to {}: {e}.", path.display()))
    })?;
    let mode = std::fs::metadata(".")
        .map_err(|e| Status::temporary(Enhanced::MAIL_SYSTEM, format!("Unable to stat home directory: {e}.")))?
        .permissions()
        .mode();
    if mode & 0o002 != 0 {
        return Err(Status::temporary(Enhanced::SECURITY, "Uh-oh: home directory is writable by everyone."));
    }
    if mode & 0o1000 != 0 {
        return Err(Status::temporary(
            Enhanced::MAILBOX_DISABLED,
            "Home directory is sticky: user is editing the .qmail file.",
        ));
    }
    Ok(())
}

/// The whole of quill-local after argument parsing: returns the report for stdout.
pub fn run(args: &Args) -> Result<String> {
    enter_home(&args.home)?;
    let plan = choose(args)?;
    let message = Message::from_stdin()?;
    check_loop(&message.head, &args.recipient())?;
    let delivery = Delivery::new(args, &plan, Arc::new(message));
    if args.dry_run {
        return Ok(delivery.describe()?.trim_end().to_string());
    }
    delivery.run()
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::base::fail::{qq, Outcome};

    #[test]
    fn loops() {
        let ok = b"Received: x\nDelivered-To: other@x\nSubject: a\n\nDelivered-To: me@x\n";
        assert!(check_loop(ok, b"me@x").is_ok());
        let looping = b"Received: x\r\ndelivered-to:  ME@x \r\n\r\n";
        assert_eq!(check_loop(looping, b"me@x").unwrap_err().outcome, Outcome::Permanent);
        let many = b"Received: x\n".repeat(MAX_HOPS + 1);
        assert!(check_loop(&many, b"me@x").is_err());
        assert!(check_loop(&b"Received: x\n".repeat(MAX_HOPS), b"me@x").is_ok());
    }

    /// Issue 9: the statuses render as the texts quill-lspawn has always read.
    #[test]
    fn statuses_render_as_before() {
        let looping = b"Delivered-To: me@x\n\n";
        assert_eq!(
            check_loop(looping, b"me@x").unwrap_err().to_string(),
            "This message is looping: it already has my Delivered-To line. (#5.4.6)"
        );
        let full = Error::queue(qq::WRITE_ERROR, crate::base::fail::qq_text(qq::WRITE_ERROR));
        assert_eq!(
            forward_failure(&full).to_string(),
            "Unable to forward message: qq write error or disk full (#4.3.0)"
        );
        let unrun = Error::queue(qq::CANNOT_EXEC, "unable to run /x/quill-queue: No such file or directory");
        assert_eq!(
            forward_failure(&unrun).to_string(),
            "Unable to forward message: unable to run /x/quill-queue: No such file or directory. (#4.3.0)"
        );
        let spam = Error { outcome: Outcome::Permanent, code: qq::CUSTOM_REPLY, message: "spam (#5.7.1)".into() };
        assert_eq!(forward_failure(&spam).to_string(), "Unable to forward message: spam (#5.7.1)");
        // A filter's code that is not at the end, or of the wrong class: the report still ends
        // in one code, of the outcome's class (doc/quill-local.8).
        let inside = Error { outcome: Outcome::Temporary, code: qq::CUSTOM_REPLY, message: "x (#5.7.1) y".into() };
        assert_eq!(forward_failure(&inside).to_string(), "Unable to forward message: x (#5.7.1) y. (#4.3.0)");
        let mixed = Error { outcome: Outcome::Temporary, code: qq::CUSTOM_REPLY, message: "later (#5.7.1)".into() };
        assert_eq!(forward_failure(&mixed).to_string(), "Unable to forward message: later (#4.7.1)");
        let refused = Error { outcome: Outcome::Permanent, code: qq::CUSTOM_REPLY, message: "no".into() };
        let status = forward_failure(&refused);
        assert_eq!(
            (status.outcome, status.to_string().as_str()),
            (Outcome::Permanent, "Unable to forward message: no. (#5.3.0)")
        );
    }

    #[test]
    fn environment_pieces() {
        assert_eq!(after_dashes(b"a-b-c", 1), b"b-c");
        assert_eq!(after_dashes(b"a-b-c", 3), b"");
        assert_eq!(without_components(b"mail.example.com", 1), b"mail.example");
        assert_eq!(without_components(b"mail.example.com", 3), b"mail");
        assert_eq!(ufline(b"", 0), b"From MAILER-DAEMON Thu Jan  1 00:00:00 1970\n".to_vec());
    }

    /// Audit item 13: the lines Quill writes from an envelope address carry no control byte.
    #[test]
    fn written_lines_escape_controls() {
        let evil = b"a\x1b[2J b\x07@x";
        assert_eq!(rpline(evil), b"Return-Path: <a?[2J b?@x>\n".to_vec());
        assert_eq!(dtline(evil), b"Delivered-To: a?[2J b?@x\n".to_vec());
        assert!(ufline(evil, 0).starts_with(b"From a?[2J_b?@x Thu"));
    }
}
