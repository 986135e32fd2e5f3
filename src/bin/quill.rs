//! quill: the administrator's front end (`setup`, `check`, `status`, `stats`, `queue`).
//!
//! Job: set a host up for Quill, say what is wrong with an installation and how to fix it,
//! show what runs and what waits in the queue (and why), summarize the logs. `setup` changes
//! the host; the queue is never written here: flush, hold, release, delete and bounce are
//! requests to quill-send through `queue/lock/control`.
//! Runs as: the administrator (`setup` needs root; `queue` and `status` see more as root).
//! Fds: 0 log lines for `stats` when no file is named; 1 the report; 2 diagnostics.
//! Exit: 0 success; 1 `check` found problems or `setup` could not finish a step; 100 usage;
//! 111 a temporary failure (unreadable file). Man page: doc/quill.8.
//! The command line and the subcommands: `quill::admin::command` (and `admin::queue_command`).

use std::process::ExitCode;

fn main() -> ExitCode {
    quill::base::log::init("quill");
    let args: Vec<String> = std::env::args().skip(1).collect();
    quill::admin::command::run(&args)
}
