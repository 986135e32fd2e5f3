//! quill-smtpd's configuration: what a session needs to know before the greeting, from the
//! control files (doc/quill-smtpd.8, FILES) and the environment (UCSPI-TCP variables,
//! RELAYCLIENT, DATABYTES, AUTH_INSECURE, AUTH_REQUIRED, QUILL_STRESS).
#![forbid(unsafe_code)]

use crate::base::confine::Policy;
use crate::base::fail::{qq, Error, Result};
use crate::mail::address::normal_domain;
use crate::mail::control::{
    Control, DEFAULT_DATABYTES, DEFAULT_MAXRCPT, DEFAULT_TIMEOUTSMTPD, DEFAULT_TIMEOUTSMTPDDATA,
    DEFAULT_TIMEOUTSMTPDSESSION,
};
use crate::mail::envelope::MAX_RECIPIENTS;
use crate::tls::server::ServerTls;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

/// Under stress (QUILL_STRESS=1 from quill-tcpserver, near its connection limit): the per-read
/// timeout, as Postfix's `smtpd_timeout = ${stress?10}` …
pub const STRESS_TIMEOUT: Duration = Duration::from_secs(10);
/// … and the longest a session may go without an open mail transaction (from the greeting, and
/// after each message) before MAIL.
pub const STRESS_IDLE: Duration = Duration::from_secs(20);

/// Everything a session needs to know before the greeting: control files and environment.
pub struct Config {
    /// control/me: the host name in replies and in our Received line.
    pub me: Vec<u8>,
    /// control/smtpgreeting (default `me`): the text of the 220 greeting.
    pub greeting: Vec<u8>,
    /// control/rcpthosts, normalised: the domains we accept mail for from anyone.
    pub rcpthosts: Vec<Vec<u8>>,
    /// DATABYTES or control/databytes (default [`DEFAULT_DATABYTES`]): the largest message, 0
    /// for no limit.
    pub databytes: u64,
    /// control/maxrcpt: recipients per message.
    pub maxrcpt: usize,
    /// control/timeoutsmtpd: the deadline of every read and write (shorter under stress).
    pub timeout: Duration,
    /// control/timeoutsmtpdsession: the deadline of the whole session.
    pub session_time: Duration,
    /// control/timeoutsmtpddata: the deadline of one message's DATA.
    pub data_time: Duration,
    /// QUILL_STRESS=1: the listener is near its connection limit; short timeouts, and MAIL must
    /// come within [`STRESS_IDLE`].
    pub stress: bool,
    /// RELAYCLIENT: present means the client may relay; its value is appended to recipients.
    pub relayclient: Option<Vec<u8>>,
    /// PROTO=PIPE: `sendmail -bs`, a local user's own session.
    pub local: bool,
    /// GREETDELAY or control/greetdelay (seconds, default 0): how long quill-smtpd listens
    /// before its greeting; a client that talks in that time is refused (postscreen's
    /// pregreet test). Not for RELAYCLIENT clients, implicit TLS or `sendmail -bs`.
    pub greet_delay: Duration,
    /// What the DNS lists of control/dnsbl say about the client ([`crate::mail::dnsbl`]),
    /// filled in by quill-smtpd's main before the confinement.
    pub dnsbl: crate::mail::dnsbl::Verdict,
    /// control/spfpolicy: whether SPF is checked at MAIL and what a fail means.
    pub spf: SpfPolicy,
    /// control/dmarcpolicy: whether DKIM and DMARC are checked at the end of the data, and
    /// whether a DMARC reject is refused.
    pub dmarc: crate::mail::dmarc::Checking,
    /// The resolver SPF, DKIM and DMARC ask (control/dnsservers or /etc/resolv.conf, read
    /// before the confinement); None when control/spfpolicy and control/dmarcpolicy are off.
    pub resolver: Option<crate::mail::dns::Resolver>,
    /// TCPREMOTEIP.
    pub remote_ip: String,
    /// TCPREMOTEHOST, or empty.
    pub remote_host: String,
    /// The certificate and key files for STARTTLS and implicit TLS, when configured and
    /// readable; they are read and parsed only when TLS starts.
    pub tls: Option<TlsFiles>,
    /// Start TLS before the greeting (port 465).
    pub implicit_tls: bool,
    /// The checkpassword command line for AUTH; empty means no AUTH.
    pub checkpassword: Vec<OsString>,
    /// The AUTH broker that runs checkpassword ([`crate::smtpd::broker`]); quill-smtpd's main
    /// starts it right after loading the configuration, when `checkpassword` is not empty.
    pub auth_broker: Option<crate::smtpd::broker::AuthBroker>,
    /// AUTH_INSECURE or control/authinsecure: offer AUTH without TLS.
    pub auth_insecure: bool,
    /// AUTH_REQUIRED: MAIL needs AUTH first (the submission port).
    pub auth_required: bool,
    /// The control files, for the recipient check (loaded at the first RCPT that needs it).
    pub control: Control,
}

/// The files named by control/tlscert and control/tlskey. A session only checks that they can
/// be read, to decide whether EHLO offers STARTTLS; they are read and parsed when the client
/// asks for TLS (most sessions never do), and since each session is a process of its own, a
/// certificate replaced on disk is used from the next STARTTLS on, without a restart.
#[derive(Clone, Debug)]
pub struct TlsFiles {
    /// The PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// The PEM private key (the certificate's file when control/tlskey is missing).
    pub key: PathBuf,
}

impl TlsFiles {
    /// Whether both files can be read by this process: access(2), no open, no parse.
    fn readable(&self) -> Result<()> {
        if !crate::tls::server::AVAILABLE {
            return Err(Error::temporary("unable to use TLS: quill was built without the tls feature"));
        }
        for (what, path) in [("certificate", &self.cert), ("key", &self.key)] {
            nix::unistd::access(path.as_path(), nix::unistd::AccessFlags::R_OK).map_err(|errno| {
                let reason = std::io::Error::from(errno);
                Error::temporary(format!("unable to read {what} {}: {reason}", path.display()))
            })?;
        }
        Ok(())
    }

    /// The files control/tlscert and control/tlskey name (relative to control/), if any.
    fn named(control: &Control) -> Result<Option<TlsFiles>> {
        let Some(cert) = control.line("tlscert")? else { return Ok(None) };
        let resolve = |name: Vec<u8>| -> PathBuf { control.home.join("control").join(OsString::from_vec(name)) };
        let cert = resolve(cert);
        let key = control.line("tlskey")?.map(resolve).unwrap_or_else(|| cert.clone());
        Ok(Some(TlsFiles { cert, key }))
    }

    /// Read and parse both files now, for a TLS handshake about to start.
    pub fn load(&self) -> Result<ServerTls> {
        ServerTls::load(&self.cert, &self.key)
    }
}

/// Confine this session for good (issue 11; the policy is `mail::jail::smtpd`): called once
/// its configuration is read, before the first byte from the client. A confined session
/// cannot run quill-queue, so only one whose messages go to quill-queued is confined. Not
/// confined, by design: a session whose `QMAILQUEUE` names a filter (the filter must be able
/// to run the setuid quill-queue); `sendmail -bs` (`PROTO=PIPE`: a local user's own session,
/// which quill-queued does not take); a session running as root (quill-queued takes only
/// quilld and its own uid; root's messages go to quill-queue). AUTH's checkpassword runs in
/// the broker forked before this call ([`crate::smtpd::broker`]), outside the confinement.
pub fn confine(config: &Config) {
    if crate::mail::submit::filter().is_some()
        || std::env::var_os("PROTO").is_some_and(|p| p == "PIPE")
        || crate::base::sys::uids().0 == 0
    {
        return;
    }
    let tls: Vec<PathBuf> = config.tls.iter().flat_map(|t| [t.cert.clone(), t.key.clone()]).collect();
    let aliases = crate::mail::aliases::aliases_path(&config.control);
    crate::base::confine::apply(&crate::mail::jail::smtpd(&config.control.home, &aliases, &tls));
}

/// For quill-tcpserver running the linked quill-smtpd with `args` (the arguments after its
/// name), before it accepts anything (`base::confine::serve`): the policy each session's
/// [`confine`] will apply, built from the server's environment and control files exactly as a
/// session builds it (a session whose rules change them builds its own), and whether a
/// session looks up names before it is confined (control/dnsbl). An error says why the
/// sessions must confine themselves one by one instead: they must be able to run a program
/// (AUTH's checkpassword, often setuid; a QMAILQUEUE filter) or they run as root, unconfined.
pub fn linked_policy(args: &[OsString]) -> std::result::Result<(Policy, bool), String> {
    let mut args = args;
    if args.first().is_some_and(|a| a == "-s") {
        args = &args[1..];
    }
    if args.first().is_some_and(|a| a == "--") {
        args = &args[1..];
    }
    if !args.is_empty() {
        return Err("AUTH runs a checkpassword program".to_string());
    }
    if crate::mail::submit::filter().is_some() {
        return Err("QMAILQUEUE names a filter".to_string());
    }
    if crate::base::sys::uids().0 == 0 {
        return Err("the sessions run as root".to_string());
    }
    let control = Control::from_env();
    let unreadable = |e: Error| format!("unable to read the control files: {}", e.message);
    let tls = TlsFiles::named(&control).map_err(unreadable)?.filter(|files| files.readable().is_ok());
    let tls: Vec<PathBuf> = tls.iter().flat_map(|t| [t.cert.clone(), t.key.clone()]).collect();
    let dnsbl = control.read(crate::mail::dnsbl::FILE).map_err(unreadable)?.is_some();
    let aliases = crate::mail::aliases::aliases_path(&control);
    Ok((crate::mail::jail::smtpd(&control.home, &aliases, &tls), dnsbl))
}

pub use crate::mail::spf::Policy as SpfPolicy;

fn env_bytes(name: &str) -> Option<Vec<u8>> {
    std::env::var_os(name).map(OsString::into_vec)
}

fn env_flag(name: &str) -> bool {
    env_bytes(name).is_some_and(|v| !v.is_empty() && v != b"0")
}

impl Config {
    /// Read control files and the environment (the UCSPI-TCP variables, RELAYCLIENT,
    /// DATABYTES, AUTH_INSECURE, AUTH_REQUIRED). An unreadable or malformed control file is an
    /// error (the caller answers 421); a certificate or key that cannot be read only means no
    /// STARTTLS, except in implicit-TLS mode, where it is an error. Neither is opened here.
    pub fn load(control: &Control, checkpassword: Vec<OsString>, implicit_tls: bool) -> Result<Config> {
        let me = control.me()?;
        let greeting = control.line("smtpgreeting")?.unwrap_or_else(|| me.clone());
        let rcpthosts = control.lines("rcpthosts")?.iter().map(|d| normal_domain(d)).collect();
        let databytes = match env_bytes("DATABYTES") {
            Some(v) => std::str::from_utf8(&v)
                .ok()
                .and_then(|s| s.trim().parse::<u64>().ok())
                .ok_or_else(|| Error::queue(qq::CONFIG_ERROR, "unable to parse DATABYTES: not a number"))?,
            None => control.number("databytes", DEFAULT_DATABYTES)?,
        };
        let maxrcpt = control.number("maxrcpt", DEFAULT_MAXRCPT)?.clamp(1, MAX_RECIPIENTS as u64) as usize;
        let stress = env_flag("QUILL_STRESS");
        let mut timeout = Duration::from_secs(control.number("timeoutsmtpd", DEFAULT_TIMEOUTSMTPD)?.max(1));
        if stress {
            timeout = timeout.min(STRESS_TIMEOUT);
        }
        let session_time =
            Duration::from_secs(control.number("timeoutsmtpdsession", DEFAULT_TIMEOUTSMTPDSESSION)?.max(1));
        let data_time = Duration::from_secs(control.number("timeoutsmtpddata", DEFAULT_TIMEOUTSMTPDDATA)?.max(1));
        let tls = match TlsFiles::named(control)? {
            None => None,
            Some(files) => match files.readable() {
                Ok(()) => Some(files),
                Err(e) if implicit_tls => return Err(e),
                Err(e) => {
                    crate::base::log::warning(&format!("{e}; STARTTLS is not offered"));
                    None
                }
            },
        };
        if implicit_tls && tls.is_none() {
            return Err(Error::temporary("unable to start implicit TLS: control/tlscert is missing"));
        }
        let relayclient = env_bytes("RELAYCLIENT");
        let greet_delay =
            if relayclient.is_some() || implicit_tls || std::env::var_os("PROTO").is_some_and(|p| p == "PIPE") {
                Duration::ZERO
            } else {
                match env_bytes("GREETDELAY") {
                    Some(v) => Duration::from_secs(
                        std::str::from_utf8(&v).ok().and_then(|s| s.trim().parse::<u64>().ok()).ok_or_else(|| {
                            Error::queue(qq::CONFIG_ERROR, "unable to parse GREETDELAY: not a number")
                        })?,
                    ),
                    None => Duration::from_secs(control.number("greetdelay", 0)?),
                }
            };
        // Only a session that can offer AUTH needs control/authinsecure.
        let auth_insecure =
            !checkpassword.is_empty() && (env_flag("AUTH_INSECURE") || control.read("authinsecure")?.is_some());
        let spf = SpfPolicy::load(control)?;
        let dmarc = crate::mail::dmarc::Checking::load(control)?;
        let resolver = match (spf, dmarc) {
            (SpfPolicy::Off, crate::mail::dmarc::Checking::Off) => None,
            _ => Some(crate::mail::dns::Resolver::from_control(control)?),
        };
        Ok(Config {
            control: control.clone(),
            spf,
            dmarc,
            resolver,
            greeting,
            rcpthosts,
            databytes,
            maxrcpt,
            timeout,
            session_time,
            data_time,
            stress,
            relayclient,
            local: std::env::var_os("PROTO").is_some_and(|p| p == "PIPE"),
            greet_delay,
            dnsbl: crate::mail::dnsbl::Verdict::default(),
            remote_ip: std::env::var("TCPREMOTEIP").unwrap_or_else(|_| "unknown".to_string()),
            remote_host: std::env::var("TCPREMOTEHOST").unwrap_or_default(),
            tls,
            implicit_tls,
            checkpassword,
            auth_broker: None,
            auth_insecure,
            auth_required: env_flag("AUTH_REQUIRED"),
            me,
        })
    }
}
