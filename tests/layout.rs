//! The layout of src/ (doc/INTERNALS.md "Layout of src/", issue 9): the library in tiers and
//! one folder per stage; a file imports only what its tier may, apart from the exceptions
//! listed here, each of which a later step of issue 9 removes; every program has a man page
//! and a short main. Reads the source, runs nothing.

use std::collections::BTreeSet;
use std::fs;
use std::path::{Path, PathBuf};

/// The tiers under the stages: what each may import (besides itself).
const TIERS: &[(&str, &[&str])] = &[("base", &[]), ("mail", &["base"]), ("tls", &["base"])];

/// The stages: each may import base, mail, tls and itself, never another stage.
const STAGES: &[&str] = &["admin", "inject", "local", "queue", "remote", "send", "smtpd", "spawn", "tcpserver"];

/// What every stage may import besides itself.
const BELOW_STAGES: &[&str] = &["base", "mail", "tls"];

/// The stage each program in src/bin/ belongs to: it may import what that stage may.
const PROGRAMS: &[(&str, &str)] = &[
    ("quill", "admin"),
    ("quill-clean", "queue"),
    ("quill-inject", "inject"),
    ("quill-local", "local"),
    ("quill-lspawn", "spawn"),
    ("quill-newu", "admin"),
    ("quill-queue", "queue"),
    ("quill-queued", "queue"),
    ("quill-remote", "remote"),
    ("quill-rspawn", "spawn"),
    ("quill-send", "send"),
    ("quill-smtpd", "smtpd"),
    ("quill-start", "send"),
    ("quill-tcpserver", "tcpserver"),
    ("quill-up", "admin"),
    ("sendmail", "inject"),
];

/// Programs that link a second stage's code besides their own, and which: quill-lspawn runs
/// quill-local's code in its forked delivery children (doc/quill-lspawn.8), quill-tcpserver
/// quill-smtpd's in its forked connection children (doc/quill-tcpserver.8). Only the program
/// composes the two; the library's stages still never import each other.
const LINKED: &[(&str, &str)] = &[("quill-lspawn", "local"), ("quill-tcpserver", "smtpd")];

/// Imports that break the rule today: (file under src/, the module it imports). Each is
/// named in doc/INTERNALS.md with the step that removes it; this list only ever shrinks.
const EXCEPTIONS: &[(&str, &str)] = &[];

/// The longest a program's main may be, in lines: a short main over the library (issue 9).
const MAX_PROGRAM_LINES: usize = 150;

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// Every .rs file under `dir`, as paths relative to src/.
fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let mut entries: Vec<_> = fs::read_dir(dir).expect("read src").map(|e| e.expect("entry").path()).collect();
    entries.sort();
    for path in entries {
        if path.is_dir() {
            rust_files(&path, out);
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path.strip_prefix(src()).expect("under src").to_path_buf());
        }
    }
}

/// The `FOLDER::MODULE` (or `FOLDER` alone) after every `crate::` or `quill::` in `text`.
/// A grouped import (`crate::{…}`) would escape the check, so it is reported as `{`.
fn imports(text: &str, root: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    let needle = format!("{root}::");
    let mut rest = text;
    while let Some(at) = rest.find(&needle) {
        let before = rest[..at].chars().next_back();
        rest = &rest[at + needle.len()..];
        if before.is_some_and(|c| c.is_alphanumeric() || c == '_') {
            continue;
        }
        if rest.starts_with('{') {
            found.insert("{".to_string());
            continue;
        }
        let path: String = rest.chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_' || *c == ':').collect();
        let parts: Vec<&str> = path.split("::").filter(|p| !p.is_empty()).take(2).collect();
        found.insert(parts.join("::"));
    }
    found
}

/// Whether `file`, under src/`top`/, is a program that links the stage `target` ([`LINKED`]).
fn linked(file: &Path, top: &str, target: &str) -> bool {
    top == "bin"
        && LINKED
            .iter()
            .any(|(program, stage)| file.file_stem().is_some_and(|stem| stem == *program) && *stage == target)
}

/// The folders a file in `folder` may import.
fn allowed(folder: &str) -> Option<Vec<&'static str>> {
    if let Some((name, below)) = TIERS.iter().find(|(name, _)| *name == folder) {
        return Some([*name].iter().chain(below.iter()).copied().collect());
    }
    let stage = STAGES.iter().find(|s| **s == folder)?;
    Some([*stage].iter().chain(BELOW_STAGES.iter()).copied().collect())
}

#[test]
fn imports_obey_the_tiers() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut problems = Vec::new();
    let mut used = BTreeSet::new();
    for file in &files {
        let name = file.to_string_lossy().to_string();
        if name == "lib.rs" {
            continue;
        }
        let mut parts = file.components().map(|c| c.as_os_str().to_string_lossy().to_string());
        let top = parts.next().unwrap_or_default();
        let (folder, root) = if top == "bin" {
            let program = file.file_stem().expect("stem").to_string_lossy().to_string();
            match PROGRAMS.iter().find(|(p, _)| *p == program) {
                Some((_, stage)) => (stage.to_string(), "quill"),
                None => {
                    problems.push(format!("src/{name}: a program without a stage in tests/layout.rs PROGRAMS"));
                    continue;
                }
            }
        } else if file.components().count() == 1 {
            problems.push(format!("src/{name}: a module outside every folder"));
            continue;
        } else {
            (top.clone(), "crate")
        };
        let Some(may) = allowed(&folder) else {
            problems.push(format!("src/{name}: folder {folder} is in no tier of doc/INTERNALS.md"));
            continue;
        };
        let text = fs::read_to_string(src().join(file)).expect("read source");
        for import in imports(&text, root) {
            let target = import.split("::").next().unwrap_or_default();
            if import == "{" {
                problems.push(format!("src/{name}: a grouped `{root}::{{…}}` import hides its tiers; name each path"));
            } else if may.contains(&target) || linked(file, &top, target) {
                continue;
            } else if EXCEPTIONS.contains(&(name.as_str(), import.as_str())) {
                used.insert((name.clone(), import.clone()));
            } else {
                problems
                    .push(format!("src/{name} ({folder}) imports {root}::{import}: {folder} may import only {may:?}"));
            }
        }
    }
    for (file, import) in EXCEPTIONS {
        if !used.contains(&(file.to_string(), import.to_string())) {
            problems.push(format!("exception ({file}, {import}) is gone: remove it here and in doc/INTERNALS.md"));
        }
    }
    assert!(problems.is_empty(), "layout rule broken:\n{}", problems.join("\n"));
}

#[test]
fn every_folder_says_what_it_is() {
    let mut problems = Vec::new();
    for entry in fs::read_dir(src()).expect("read src") {
        let path = entry.expect("entry").path();
        let name = path.file_name().expect("name").to_string_lossy().to_string();
        if !path.is_dir() || name == "bin" {
            continue;
        }
        match fs::read_to_string(path.join("mod.rs")) {
            Ok(text) if text.starts_with("//! ") => {}
            _ => problems.push(format!("src/{name}/mod.rs is missing or does not open with a //! comment")),
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn every_program_has_a_man_page_and_a_short_main() {
    let doc = Path::new(env!("CARGO_MANIFEST_DIR")).join("doc");
    let mut problems = Vec::new();
    let mut count = 0;
    for entry in fs::read_dir(src().join("bin")).expect("read src/bin") {
        let path = entry.expect("entry").path();
        if path.extension().is_none_or(|e| e != "rs") {
            continue;
        }
        count += 1;
        let program = path.file_stem().expect("stem").to_string_lossy().to_string();
        if !["1", "5", "8"].iter().any(|section| doc.join(format!("{program}.{section}")).is_file()) {
            problems.push(format!("src/bin/{program}.rs has no man page doc/{program}.[158]"));
        }
        let lines = fs::read_to_string(&path).expect("read program").lines().count();
        if lines > MAX_PROGRAM_LINES {
            problems.push(format!("src/bin/{program}.rs has {lines} lines, more than {MAX_PROGRAM_LINES}"));
        }
    }
    assert!(count > 0, "no programs found in src/bin");
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

/// The `tls` feature is known only in src/tls/ (doc/INTERNALS.md): without it, `tls::none`
/// stands in for `client` and `server`, so no stage carries a cfg of its own. Any
/// `feature = "…"` outside src/tls/ (a `cfg`, `cfg_attr` or `cfg!`) breaks the rule.
#[test]
fn the_tls_feature_is_known_only_in_tls() {
    let mut files = Vec::new();
    rust_files(&src(), &mut files);
    let mut problems = Vec::new();
    for file in &files {
        if file.starts_with("tls") {
            continue;
        }
        let text = fs::read_to_string(src().join(file)).expect("read source");
        for (number, line) in text.lines().enumerate() {
            let squeezed: String = line.chars().filter(|c| !c.is_whitespace()).collect();
            if squeezed.contains("feature=\"") {
                problems.push(format!("src/{}:{}: {}", file.display(), number + 1, line.trim()));
            }
        }
    }
    assert!(problems.is_empty(), "a feature gate outside src/tls/:\n{}", problems.join("\n"));
}
