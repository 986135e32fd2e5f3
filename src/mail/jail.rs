//! What each of Quill's programs may do once its setup is done: the one place that says it
//! (doc/SECURITY.md has the same as a table, and each program's man page its line). The
//! mechanism is `base::confine`: Landlock for files and TCP, seccomp for system calls,
//! no_new_privs for both. Each program calls its function here and `confine::apply`.
//!
//! Not confined, on purpose:
//! - quill-lspawn and quill-local: a delivery runs the recipient's own programs from dot files
//!   and forwards through the setuid quill-queue; no_new_privs would take that setuid from
//!   every forward and from any `sendmail` a user's program runs, and a Landlock domain would
//!   be inherited by the user's programs. Their boundary is the recipient's uid.
//! - quill-queue, sendmail, quill-inject: setuid or run by users; quill-start: root until it
//!   starts its children; quill-tcpserver when it execs its program (a filter or a domain set
//!   before the exec would bind that program too). With the linked quill-smtpd it confines
//!   itself ([`tcpserver_linked`]), except where the sessions must run a program.
//! - quill-smtpd while `QMAILQUEUE` names a filter (the filter must be able to run the setuid
//!   quill-queue); AUTH's checkpassword runs in a broker forked before the session confines
//!   itself (see [`smtpd`]).
#![forbid(unsafe_code)]

use crate::base::confine::{
    Network, Policy, ACCEPT, BASE, BASE_ARCH, CHILDREN, CHILDREN_ARCH, CONFINE_CALLS, EXEC_CALLS, NAME_SERVICE,
    READ_FILES, READ_FILES_ARCH, SOCKETS, SOCKET_PAIRS, SYSTEM_LIBRARIES, THREADS, WRITE_FILES, WRITE_FILES_ARCH,
};
use std::path::{Path, PathBuf};

fn paths(list: &[&str]) -> Vec<PathBuf> {
    list.iter().map(PathBuf::from).collect()
}

/// quill-smtpd, per connection, after its control files are read: reads its control files,
/// users/ and the aliases file (the RCPT check, loaded at the first local RCPT), the
/// certificate and key (read at STARTTLS) and the name service's files (getpwnam for the RCPT
/// check); writes nothing; executes nothing; opens unix sockets (queue/writer/socket) and UDP
/// sockets to ask DNS about SPF (the resolver's configuration is read before); no TCP.
pub fn smtpd(home: &Path, aliases: &Path, tls: &[PathBuf]) -> Policy {
    let mut read = vec![home.join("control"), home.join("users"), aliases.to_path_buf()];
    read.extend(tls.iter().cloned());
    read.extend(paths(NAME_SERVICE));
    read.extend(paths(SYSTEM_LIBRARIES));
    Policy {
        program: "quill-smtpd",
        read,
        write: vec![],
        exec: vec![],
        network: Network::Dns,
        syscalls: vec![BASE, BASE_ARCH, READ_FILES, READ_FILES_ARCH, SOCKETS],
    }
}

/// What quill-remote reads besides its control files: the trusted roots, the resolver's and
/// the hosts file.
fn remote_reads(home: &Path, ca_file: &Path) -> Vec<PathBuf> {
    let mut read = vec![home.join("control"), ca_file.to_path_buf()];
    read.extend(paths(&["/etc/ssl", "/etc/pki", "/etc/resolv.conf", "/etc/hosts"]));
    read
}

/// quill-remote, once its control files and the resolver's configuration are read: reads
/// them and the trusted roots; writes nothing; executes nothing; connects out over TCP (any
/// port: smtproutes may name one) and UDP (DNS); binds no TCP port. It may also connect to
/// the unix socket of an LMTP server (control/lmtproutes): AF_UNIX is one of `Outbound`'s
/// families, and connect(2) to a named socket is no file access Landlock controls (the
/// socket file's owner and mode decide, doc/SECURITY.md).
pub fn remote(home: &Path, ca_file: &Path) -> Policy {
    Policy {
        program: "quill-remote",
        read: remote_reads(home, ca_file),
        write: vec![],
        exec: vec![],
        network: Network::Outbound,
        syscalls: vec![BASE, BASE_ARCH, READ_FILES, READ_FILES_ARCH, SOCKETS],
    }
}

/// quill-rspawn: reads the queue's message files and executes quill-remote, which inherits this
/// domain and adds its own: so what quill-remote needs (its reads, the network, the loader's
/// libraries) is allowed here too.
pub fn rspawn(home: &Path, remote_program: &Path) -> Policy {
    // control/tlsca is under control/, the system's roots under /etc/ssl or /etc/pki.
    let mut read = remote_reads(home, &home.join("control"));
    read.push(home.join("queue"));
    // The kernel opens the loader for exec, which takes the execute right.
    let mut exec = vec![remote_program.to_path_buf()];
    exec.extend(paths(SYSTEM_LIBRARIES));
    Policy {
        program: "quill-rspawn",
        read,
        write: vec![],
        exec,
        network: Network::Outbound,
        syscalls: vec![
            BASE,
            BASE_ARCH,
            READ_FILES,
            READ_FILES_ARCH,
            CHILDREN,
            CHILDREN_ARCH,
            EXEC_CALLS,
            CONFINE_CALLS,
            SOCKETS,
            SOCKET_PAIRS,
        ],
    }
}

/// quill-tcpserver running the linked quill-smtpd (`base::confine::serve`): one filter, on
/// the server, for the server and every connection's child, which inherits it, so that no
/// child pays for a filter of its own. It is the child's (`smtpd`'s calls) joined with what the
/// server's loop needs: accept, fork, wait, kill; and with what the child does before it
/// enters its Landlock domain: name itself (prctl), enter the domain. No execve: a server
/// whose sessions must run a program (a checkpassword for AUTH, a QMAILQUEUE filter) is not
/// confined so (its children confine themselves, each with its own filter). With `dns` (the
/// `-h` name lookup, control/dnsbl: both run in the child before its domain) UDP and TCP
/// sockets may be made, and the lookup's thread started; the child's domain still refuses
/// every TCP connect. The server enters no Landlock domain: each child enters smtpd's.
pub fn tcpserver_linked(smtpd: &Policy, dns: bool) -> Policy {
    let mut syscalls = smtpd.syscalls.clone();
    syscalls.extend([ACCEPT, SOCKETS, CHILDREN, CHILDREN_ARCH, CONFINE_CALLS]);
    if dns {
        syscalls.push(THREADS);
    }
    Policy {
        program: "quill-tcpserver",
        read: vec![],
        write: vec![],
        exec: vec![],
        network: if dns { Network::Outbound } else { smtpd.network },
        syscalls,
    }
}

/// quill-clean: reads and writes the queue; nothing else, no network.
pub fn clean(home: &Path) -> Policy {
    Policy {
        program: "quill-clean",
        read: vec![],
        write: vec![home.join("queue")],
        exec: vec![],
        network: Network::None,
        syscalls: vec![BASE, BASE_ARCH, READ_FILES, READ_FILES_ARCH, WRITE_FILES, WRITE_FILES_ARCH],
    }
}

/// quill-queued, listening: writes the queue; reads the name service's files (who a peer's uid
/// is) and control/ (the DKIM keys and control/dkimsign); unix sockets only (NSS daemons);
/// threads.
pub fn queued(home: &Path) -> Policy {
    let mut read = paths(NAME_SERVICE);
    read.extend(paths(SYSTEM_LIBRARIES));
    read.push(home.join("control"));
    Policy {
        program: "quill-queued",
        read,
        write: vec![home.join("queue")],
        exec: vec![],
        network: Network::Local,
        syscalls: vec![
            BASE,
            BASE_ARCH,
            READ_FILES,
            READ_FILES_ARCH,
            WRITE_FILES,
            WRITE_FILES_ARCH,
            THREADS,
            ACCEPT,
            SOCKETS,
        ],
    }
}

/// quill-send: reads the whole home (control files, users/, the queue's files for bounces);
/// writes the queue (its info/ and lock/); no exec: its bounces go to quill-queued over
/// unix sockets (so no setuid quill-queue is needed).
pub fn send(home: &Path) -> Policy {
    let mut read = vec![home.to_path_buf()];
    read.extend(paths(NAME_SERVICE));
    read.extend(paths(SYSTEM_LIBRARIES));
    Policy {
        program: "quill-send",
        read,
        write: vec![home.join("queue")],
        exec: vec![],
        network: Network::Local,
        syscalls: vec![BASE, BASE_ARCH, READ_FILES, READ_FILES_ARCH, WRITE_FILES, WRITE_FILES_ARCH, SOCKETS],
    }
}

/// Every policy, with placeholder paths: for the documentation's table and the tests.
pub fn all(home: &Path) -> Vec<Policy> {
    let bin = crate::mail::control::program("quill-remote");
    let ca = Path::new("/etc/ssl/certs/ca-certificates.crt");
    vec![
        smtpd(home, Path::new("/etc/aliases"), &[home.join("control/cert.pem")]),
        remote(home, ca),
        rspawn(home, &bin),
        clean(home),
        queued(home),
        send(home),
    ]
}
