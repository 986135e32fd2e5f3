/work/wt/jail/target-rel/release/deps/quill_remote-cfdd59fbe733bd39.d: src/bin/quill-remote.rs

/work/wt/jail/target-rel/release/deps/quill_remote-cfdd59fbe733bd39: src/bin/quill-remote.rs

src/bin/quill-remote.rs:
