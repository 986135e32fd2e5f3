//! Where Quill lives and what its control files say.
//!
//! Control files follow qmail: one value per line, `#` comments and blank lines ignored in
//! list files, trailing white space ignored everywhere. A missing file means "use the
//! default"; an unreadable one is a temporary error (qmail-queue code 55): a program must
//! never run on a half-read configuration.
#![forbid(unsafe_code)]

use crate::base::fail::{qq, Error, Result};
use std::io;
use std::path::{Path, PathBuf};

/// The compiled-in home; `make QUILL_HOME_DEFAULT=/path` changes it at build time.
pub const DEFAULT_HOME: &str = match option_env!("QUILL_HOME_DEFAULT") {
    Some(home) => home,
    None => "/var/quill",
};

/// The home directory: `QUILL_HOME` from the environment, unless the program runs setuid or
/// setgid (then only the compiled-in default counts: DESIGN §2).
pub fn home() -> PathBuf {
    if !crate::base::sys::is_secure_exec() {
        if let Some(home) = std::env::var_os("QUILL_HOME") {
            if !home.is_empty() {
                return PathBuf::from(home);
            }
        }
    }
    PathBuf::from(DEFAULT_HOME)
}

/// The directory holding Quill's programs: the directory of the running executable (through
/// any symbolic link, so /usr/sbin/sendmail → …/bin/sendmail finds …/bin/quill-queue). Not
/// taken from the environment, so root and setuid programs may rely on it.
pub fn bindir() -> PathBuf {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.canonicalize().ok())
        .and_then(|p| p.parent().map(Path::to_path_buf))
        .unwrap_or_else(|| PathBuf::from("/usr/local/bin"))
}

/// The path of one of Quill's programs, next to the running one.
pub fn program(name: &str) -> PathBuf {
    bindir().join(name)
}

// The defaults of the numeric control files (doc/quill-control.5), one place for every program
// that reads one or writes one out (quill setup and quill-up write `databytes`).

/// `databytes` when the file is missing (25 MiB, the order of Postfix's message_size_limit):
/// without a limit one client can fill the queue's disk. An explicit 0 still means no limit.
pub const DEFAULT_DATABYTES: u64 = 26_214_400;
/// `maxrcpt`: recipients per message quill-smtpd accepts.
pub const DEFAULT_MAXRCPT: u64 = 1000;
/// `timeoutsmtpd`, in seconds: the longest quill-smtpd waits for one read or write.
pub const DEFAULT_TIMEOUTSMTPD: u64 = 1200;
/// `timeoutsmtpdsession`, in seconds: the longest a whole SMTP session may last.
pub const DEFAULT_TIMEOUTSMTPDSESSION: u64 = 3600;
/// `timeoutsmtpddata`, in seconds: the longest one message's DATA may take (25 MiB in 30
/// minutes needs about 120 kbit/s).
pub const DEFAULT_TIMEOUTSMTPDDATA: u64 = 1800;
/// `concurrencylocal`: local deliveries quill-send runs at once.
pub const DEFAULT_CONCURRENCYLOCAL: u64 = 10;
/// `concurrencyremote`: remote deliveries quill-send runs at once.
pub const DEFAULT_CONCURRENCYREMOTE: u64 = 20;
/// `concurrencydestination`: remote deliveries at once to one destination (domain).
pub const DEFAULT_CONCURRENCYDESTINATION: u64 = 10;
/// `concurrencyrecipient`: local deliveries at once to one recipient address (Postfix's
/// local_destination_concurrency_limit).
pub const DEFAULT_CONCURRENCYRECIPIENT: u64 = 2;
/// `timeoutremoteidle`, in seconds: how long quill-rspawn keeps an idle SMTP connection open
/// for the next message to a destination with a backlog (Postfix's
/// smtp_connection_cache_time_limit); 0 keeps none.
pub const DEFAULT_TIMEOUTREMOTEIDLE: u64 = 2;
/// `reuseremote`: the most messages one kept connection (one kept quill-remote) carries
/// (Postfix's smtp_connection_reuse_count_limit); 1 or 0 keeps none.
pub const DEFAULT_REUSEREMOTE: u64 = 100;
/// `backoffmin`, in seconds: how long an unreachable destination is left alone after its first
/// failure.
pub const DEFAULT_BACKOFFMIN: u64 = 300;
/// `backoffmax`, in seconds: the longest such wait.
pub const DEFAULT_BACKOFFMAX: u64 = 3600;
/// `queuelifetime`, in seconds (one week, as qmail): after it a temporary failure is permanent.
pub const DEFAULT_QUEUELIFETIME: u64 = 604_800;
/// `delaywarningtime`, in seconds: after it a message with recipients still deferred earns its
/// sender one delay warning (Postfix's delay_warning_time); 0, the default as in Postfix, sends
/// none.
pub const DEFAULT_DELAYWARNINGTIME: u64 = 0;
/// `queueactive`: messages quill-send holds in memory at most (Postfix's
/// qmgr_message_active_limit); the rest wait on disk as an id and a time.
pub const DEFAULT_QUEUEACTIVE: u64 = 10_000;

/// Reader for `HOME/control/*`.
#[derive(Clone, Debug)]
pub struct Control {
    /// The Quill home (QUILL_HOME).
    pub home: PathBuf,
}

fn trim(line: &[u8]) -> &[u8] {
    let mut end = line.len();
    while end > 0 && matches!(line[end - 1], b' ' | b'\t' | b'\r') {
        end -= 1;
    }
    &line[..end]
}

impl Control {
    /// Control files under `home`.
    pub fn new(home: impl Into<PathBuf>) -> Control {
        Control { home: home.into() }
    }

    /// Control files under [`home()`].
    pub fn from_env() -> Control {
        Control::new(home())
    }

    /// The path of a control file.
    pub fn path(&self, name: &str) -> PathBuf {
        self.home.join("control").join(name)
    }

    /// The whole file, or None if it does not exist.
    pub fn read(&self, name: &str) -> Result<Option<Vec<u8>>> {
        // Not fs::read or read_to_end, which ask for the size and position first (statx,
        // lseek): control files are a line or a few, and quill-smtpd reads several at every
        // start, one per connection. A file that ends is read to its end.
        let read = std::fs::File::open(self.path(name)).and_then(|mut file| {
            let mut bytes = Vec::new();
            let mut chunk = [0u8; 4096];
            loop {
                match io::Read::read(&mut file, &mut chunk) {
                    Ok(0) => return Ok(bytes),
                    Ok(n) => bytes.extend_from_slice(&chunk[..n]),
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                    Err(e) => return Err(e),
                }
            }
        });
        match read {
            Ok(bytes) => Ok(Some(bytes)),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io_code(qq::CONFIG_ERROR, format!("read control/{name}"), &e)),
        }
    }

    /// The first line, trimmed; None if the file is missing or its first line is empty.
    pub fn line(&self, name: &str) -> Result<Option<Vec<u8>>> {
        Ok(self.read(name)?.and_then(|bytes| {
            let first = bytes.split(|&b| b == b'\n').next().unwrap_or(&[]);
            let first = trim(first);
            if first.is_empty() {
                None
            } else {
                Some(first.to_vec())
            }
        }))
    }

    /// The first line as a string, or `default`.
    pub fn string(&self, name: &str, default: &str) -> Result<String> {
        Ok(match self.line(name)? {
            Some(v) => String::from_utf8_lossy(&v).into_owned(),
            None => default.to_string(),
        })
    }

    /// Every non-blank, non-comment line, trimmed; empty if the file is missing.
    pub fn lines(&self, name: &str) -> Result<Vec<Vec<u8>>> {
        Ok(match self.read(name)? {
            None => Vec::new(),
            Some(bytes) => bytes
                .split(|&b| b == b'\n')
                .map(trim)
                .filter(|l| !l.is_empty() && l[0] != b'#')
                .map(<[u8]>::to_vec)
                .collect(),
        })
    }

    /// A number from the first line, or `default` if missing. A line that is not a number is
    /// a configuration error (temporary), not silently the default.
    pub fn number(&self, name: &str, default: u64) -> Result<u64> {
        match self.line(name)? {
            None => Ok(default),
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::queue(qq::CONFIG_ERROR, format!("unable to parse control/{name}: not a number"))),
        }
    }

    /// `control/me`, or the system's host name, or "localhost".
    pub fn me(&self) -> Result<Vec<u8>> {
        if let Some(me) = self.line("me")? {
            return Ok(me);
        }
        Ok(nix::unistd::gethostname()
            .ok()
            .and_then(|h| h.into_string().ok())
            .filter(|h| !h.is_empty())
            .unwrap_or_else(|| "localhost".to_string())
            .into_bytes())
    }

    /// The first line of `name`, or `control/me`.
    pub fn line_or_me(&self, name: &str) -> Result<Vec<u8>> {
        match self.line(name)? {
            Some(v) => Ok(v),
            None => self.me(),
        }
    }

    /// The local domains: `control/locals`, or `me` if that file is missing. Lower case.
    pub fn locals(&self) -> Result<Vec<Vec<u8>>> {
        let list = self.lines("locals")?;
        let list = if list.is_empty() && self.read("locals")?.is_none() { vec![self.me()?] } else { list };
        Ok(list.iter().map(|d| crate::mail::address::normal_domain(d)).collect())
    }
}
