//! quill-smtpd's whole program after its name, in one function ([`serve`]): the quill-smtpd
//! binary calls it with its arguments, and quill-tcpserver's forked connection child calls it
//! the same way when it runs quill-smtpd's code without exec (doc/quill-tcpserver.8, "The
//! linked quill-smtpd"). Everything smtpd sets up for a session happens here, in this order,
//! for both: its name in the log, its options, its control files and environment, the queue
//! writer, then the session.
#![forbid(unsafe_code)]

use crate::base::fail::exit;
use crate::base::log;
use crate::mail::control::Control;
use crate::smtpd::session::{Config, Session};
use std::ffi::OsString;
use std::io::Write;

/// The usage line, for the manual and errors.
pub const USAGE: &str = "usage: quill-smtpd [-s] [checkpassword-program [args…]]";

/// Serve one SMTP connection: the client on fd 0 and 1, the log on fd 2, the UCSPI-TCP
/// variables and the rest of the settings in the environment; `args` are the arguments after
/// the program's name (`[-s] [--] [checkpassword-program [args…]]`). Returns the exit code:
/// 0 after a session, whatever the client did; 111 when the configuration cannot be read
/// (the client is told `421`, except with implicit TLS, where it could not read it).
pub fn serve(mut args: Vec<OsString>) -> u8 {
    log::rename("quill-smtpd");
    let mut implicit_tls = std::env::var_os("SMTPS").is_some_and(|v| v == "1");
    if args.first().is_some_and(|a| a == "-s") {
        args.remove(0);
        implicit_tls = true;
    }
    if args.first().is_some_and(|a| a == "--") {
        args.remove(0);
    }
    let control = Control::from_env();
    let started = std::time::Instant::now();
    let loaded = Config::load(&control, args, implicit_tls).and_then(|mut config| {
        // The blocklists need a socket, so they are asked before the confinement; their time
        // counts as part of the greeting delay.
        config.dnsbl = crate::mail::dnsbl::lookup(&control, &config.remote_ip, config.relayclient.is_some())?;
        config.greet_delay = match config.dnsbl.allowed {
            true => std::time::Duration::ZERO,
            false => config.greet_delay.saturating_sub(started.elapsed()),
        };
        Ok(config)
    });
    let mut config = match loaded {
        Ok(config) => config,
        Err(e) => {
            log::fatal(&e.message);
            if !implicit_tls {
                let mut out = std::io::stdout().lock();
                let _ = out.write_all(b"421 4.3.0 unable to read controls, try again later\r\n");
                let _ = out.flush();
            }
            return exit::TEMPORARY;
        }
    };
    // Messages go to quill-queued over its socket, or to quill-queue where it cannot be reached.
    crate::mail::submit::use_queue_writer();
    // First the AUTH broker (only with a checkpassword program): it must be forked before the
    // process gives up the right to gain privileges by exec, so that a setuid checkpassword
    // still works. Then the one place where the session is confined (doc/quill-smtpd.8,
    // SECURITY), before the first read from the client.
    config.auth_broker = crate::smtpd::broker::start_auth_broker(&config.checkpassword);
    crate::smtpd::config::confine(&config);
    match Session::new(config) {
        Ok(session) => {
            session.run();
            exit::SUCCESS
        }
        Err(e) => {
            log::fatal(&format!("unable to set up the connection: {e}"));
            exit::TEMPORARY
        }
    }
}
