/work/wt/jail/target-rel/release/deps/quill_newu-1255abcfe7d2e65f.d: src/bin/quill-newu.rs

/work/wt/jail/target-rel/release/deps/quill_newu-1255abcfe7d2e65f: src/bin/quill-newu.rs

src/bin/quill-newu.rs:
