//! quill-smtpd: the SMTP server for one connection.
//!
//! Job: speak SMTP (RFC 5321 with PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8,
//! STARTTLS and AUTH PLAIN/LOGIN) with the client on fd 0/1 and hand every accepted message to
//! quill-queued over `queue/writer/socket` (quill-queue where it cannot be reached, or
//! `QMAILQUEUE`) through `quill::mail::submit`. It never opens the queue's files itself.
//! Runs as: `quilld`, started per connection by quill-tcpserver (or ucspi-tcp's tcpserver),
//! which sets TCPREMOTEIP and friends.
//! Usage: `quill-smtpd [-s] [checkpassword-program [args…]]`; `-s` (or SMTPS=1) starts TLS
//! before the greeting (port 465); the checkpassword program checks AUTH credentials.
//! Descriptors: 0 from the client, 1 to the client, 2 the log.
//! Exit codes: 0 after a session (whatever the client did); 111 when the configuration cannot
//! be read (the client is told `421`).
//! Manual: doc/quill-smtpd.8.

use quill::mail::control::Control;
use quill::smtpd::session::{Config, Session};
use std::ffi::OsString;
use std::io::Write;
use std::process::ExitCode;

fn main() -> ExitCode {
    quill::base::log::init("quill-smtpd");
    let mut args: Vec<OsString> = std::env::args_os().skip(1).collect();
    let mut implicit_tls = std::env::var_os("SMTPS").is_some_and(|v| v == "1");
    if args.first().is_some_and(|a| a == "-s") {
        args.remove(0);
        implicit_tls = true;
    }
    if args.first().is_some_and(|a| a == "--") {
        args.remove(0);
    }
    let control = Control::from_env();
    let mut config = match Config::load(&control, args, implicit_tls) {
        Ok(config) => config,
        Err(e) => {
            let code = quill::base::log::fatal_exit(&e.message);
            if !implicit_tls {
                let _ = std::io::stdout().write_all(b"421 4.3.0 unable to read controls, try again later\r\n");
            }
            return code;
        }
    };
    // First the AUTH broker (only with a checkpassword program): it must be forked before the
    // process gives up the right to gain privileges by exec, so that a setuid checkpassword
    // still works. Confinement comes right after it, and before the first read from the client.
    config.auth_broker = quill::smtpd::broker::start_auth_broker(&config.checkpassword);
    if let Err(e) = quill::base::sys::no_new_privs() {
        quill::base::log::warning(&format!("unable to set no_new_privs: {e}"));
    }
    // Messages go to quill-queued over its socket, or to quill-queue where it cannot be reached.
    quill::mail::submit::use_queue_writer();
    match Session::new(config) {
        Ok(session) => {
            session.run();
            ExitCode::SUCCESS
        }
        Err(e) => quill::base::log::fatal_exit(&format!("unable to set up the connection: {e}")),
    }
}
