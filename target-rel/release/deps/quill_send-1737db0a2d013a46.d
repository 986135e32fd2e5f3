/work/wt/jail/target-rel/release/deps/quill_send-1737db0a2d013a46.d: src/bin/quill-send.rs

/work/wt/jail/target-rel/release/deps/quill_send-1737db0a2d013a46: src/bin/quill-send.rs

src/bin/quill-send.rs:
