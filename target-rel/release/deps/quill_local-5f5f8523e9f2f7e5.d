/work/wt/jail/target-rel/release/deps/quill_local-5f5f8523e9f2f7e5.d: src/bin/quill-local.rs

/work/wt/jail/target-rel/release/deps/quill_local-5f5f8523e9f2f7e5: src/bin/quill-local.rs

src/bin/quill-local.rs:
