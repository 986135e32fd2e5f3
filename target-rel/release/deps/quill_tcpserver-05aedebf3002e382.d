/work/wt/jail/target-rel/release/deps/quill_tcpserver-05aedebf3002e382.d: src/bin/quill-tcpserver.rs

/work/wt/jail/target-rel/release/deps/quill_tcpserver-05aedebf3002e382: src/bin/quill-tcpserver.rs

src/bin/quill-tcpserver.rs:
