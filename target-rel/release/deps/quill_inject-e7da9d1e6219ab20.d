/work/wt/jail/target-rel/release/deps/quill_inject-e7da9d1e6219ab20.d: src/bin/quill-inject.rs

/work/wt/jail/target-rel/release/deps/quill_inject-e7da9d1e6219ab20: src/bin/quill-inject.rs

src/bin/quill-inject.rs:
