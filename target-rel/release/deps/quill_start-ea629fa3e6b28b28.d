/work/wt/jail/target-rel/release/deps/quill_start-ea629fa3e6b28b28.d: src/bin/quill-start.rs

/work/wt/jail/target-rel/release/deps/quill_start-ea629fa3e6b28b28: src/bin/quill-start.rs

src/bin/quill-start.rs:
