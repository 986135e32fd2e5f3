/work/wt/jail/target-rel/release/deps/quill_lspawn-9d8e350a9f94b1a0.d: src/bin/quill-lspawn.rs

/work/wt/jail/target-rel/release/deps/quill_lspawn-9d8e350a9f94b1a0: src/bin/quill-lspawn.rs

src/bin/quill-lspawn.rs:
