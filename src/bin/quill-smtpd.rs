//! quill-smtpd: the SMTP server for one connection.
//!
//! Job: speak SMTP (RFC 5321 with PIPELINING, SIZE, 8BITMIME, ENHANCEDSTATUSCODES, SMTPUTF8,
//! STARTTLS and AUTH PLAIN/LOGIN) with the client on fd 0/1 and hand every accepted message to
//! quill-queued over `queue/writer/socket` (quill-queue where it cannot be reached, or
//! `QMAILQUEUE`) through `quill::mail::submit`. It never opens the queue's files itself.
//! Runs as: `quilld`, started per connection by quill-tcpserver (or ucspi-tcp's tcpserver),
//! which sets TCPREMOTEIP and friends. quill-tcpserver normally runs this same code in its
//! forked connection child without exec (doc/quill-tcpserver.8); this binary is the form any
//! other tcpserver, `quill-tcpserver -e` and the administrator run.
//! Usage: `quill-smtpd [-s] [checkpassword-program [args…]]`; `-s` (or SMTPS=1) starts TLS
//! before the greeting (port 465); the checkpassword program checks AUTH credentials.
//! Descriptors: 0 from the client, 1 to the client, 2 the log.
//! Exit codes: 0 after a session (whatever the client did); 111 when the configuration cannot
//! be read (the client is told `421`).
//! The program is `quill::smtpd::entry::serve`, shared with quill-tcpserver's linked child.
//! Manual: doc/quill-smtpd.8.

use std::process::ExitCode;

fn main() -> ExitCode {
    quill::base::log::init("quill-smtpd");
    ExitCode::from(quill::smtpd::entry::serve(std::env::args_os().skip(1).collect()))
}
