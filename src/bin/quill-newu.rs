//! quill-newu: compiles `QUILL_HOME/users/assign` into `QUILL_HOME/users/assign.db`.
//!
//! Runs as root (or the owner of a private instance) by hand or from quill-up; takes no
//! arguments, reads no network input. fd 0 and 1 unused; fd 2: diagnostics.
//! The new database replaces the old one atomically (write assign.db.tmp, fsync, rename,
//! fsync users/); on any error the old database stays in place.
//! Exit codes: 0 compiled; 100 usage error; 111 anything else (a bad line, named by number).
//! Man page: doc/quill-newu.8; the formats: doc/quill-users.5.
#![forbid(unsafe_code)]

use quill::base::fail::{Error, Result};
use std::io::Write;
use std::process::ExitCode;

fn compile(home: &std::path::Path) -> Result<usize> {
    let source_path = quill::mail::users::assign_path(home);
    let source =
        std::fs::read(&source_path).map_err(|e| Error::io(format_args!("read {}", source_path.display()), &e))?;
    let bytes = quill::mail::users::compile_assign(&source)?;
    let count = quill::mail::users::AssignDb::parse(bytes.clone())?.len();
    let db = quill::mail::users::assign_db_path(home);
    let tmp = db.with_extension("db.tmp");
    let write = || -> std::io::Result<()> {
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o644).open(&tmp)?;
        file.write_all(&bytes)?;
        file.sync_all()?;
        drop(file);
        std::fs::rename(&tmp, &db)?;
        std::fs::File::open(home.join("users"))?.sync_all()
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::io(format_args!("write {}", db.display()), &e)
    })?;
    Ok(count)
}

fn main() -> ExitCode {
    quill::base::log::init("quill-newu");
    if std::env::args_os().len() > 1 {
        return quill::base::log::fatal_permanent("usage: quill-newu (it reads QUILL_HOME/users/assign)");
    }
    match compile(&quill::mail::control::home()) {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => quill::base::log::fatal_exit(&e.message),
    }
}
