/work/wt/jail/target-rel/release/deps/quill_queue-03a2f80e6bd9c8c1.d: src/bin/quill-queue.rs

/work/wt/jail/target-rel/release/deps/quill_queue-03a2f80e6bd9c8c1: src/bin/quill-queue.rs

src/bin/quill-queue.rs:
