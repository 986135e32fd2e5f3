/work/wt/jail/target-rel/release/deps/getopts-c61b5b2b89ac6231.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/getopts-0.2.24/src/lib.rs

/work/wt/jail/target-rel/release/deps/libgetopts-c61b5b2b89ac6231.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/getopts-0.2.24/src/lib.rs

/work/wt/jail/target-rel/release/deps/libgetopts-c61b5b2b89ac6231.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/getopts-0.2.24/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/getopts-0.2.24/src/lib.rs:
