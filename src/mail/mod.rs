//! The mail tier: the formats and codecs that more than one stage reads or writes. It
//! imports only `base`.
//!
//! Values: `address`, `envelope`, `header`. Policy: `rewrite` (locals and virtualdomains, the
//! recipient rewriting quill-send and quill-smtpd share). Files: `control` (doc/quill-control.5),
//! `queuefile` (doc/queue-format.5: the queue's layout and a message file's header),
//! `aliases` (doc/aliases.5), `users` (doc/quill-users.5), `dotqmail` (doc/dot-qmail.5),
//! `dns` (the stub resolver: quill-remote's MX lookups, quill-smtpd's blocklists and SPF),
//! `dnsbl` (control/dnsbl and the lookups of a client in its zones), `spf` (RFC 7208's
//! check_host() over a DNS trait), `authres` (the Authentication-Results header and the
//! removal of forged ones), `dkim` (signing), `dkimverify` (streaming DKIM verification),
//! `dmarc` (RFC 7489 policy and alignment), `dsn` (RFC 3461 parameters and their queue
//! record),
//! `queuelist` (the queue listing `mailq` and `quill queue list` print), `recipient` (whether
//! a local address is deliverable: quill-smtpd's RCPT check, `sendmail -bv`), `senderlogins`
//! (which senders an authenticated user may use), `routes` (the lines of smtproutes,
//! senderroutes and lmtproutes). Confinement: `jail`
//! (what each program may do once confined, over `base::confine`).
//! Protocols: `smtp` (the SMTP codec), `submit`
//! (the qmail-queue protocol, the caller's side), `writer_client` (its way to quill-queued,
//! for quill-smtpd), and `proto/`: one codec per pipe protocol,
//! writer and reader together (`clean`: quill-send ↔ quill-clean; `remote_report`:
//! quill-remote → quill-rspawn; `spawn`: quill-send ↔ the spawners; `control`: the
//! administrator → quill-send).
#![forbid(unsafe_code)]

pub mod address;
pub mod aliases;
pub mod authres;
pub mod control;
pub mod dkim;
pub mod dkimverify;
pub mod dmarc;
pub mod dns;
pub mod dnsbl;
pub mod dotqmail;
pub mod dsn;
pub mod envelope;
pub mod header;
pub mod idna;
pub mod jail;
pub mod proto;
pub mod queuefile;
pub mod queuelist;
pub mod recipient;
pub mod rewrite;
pub mod routes;
pub mod senderlogins;
pub mod smtp;
pub mod spf;
pub mod submit;
pub mod users;
pub mod writer_client;
