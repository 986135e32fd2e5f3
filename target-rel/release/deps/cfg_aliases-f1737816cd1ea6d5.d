/work/wt/jail/target-rel/release/deps/cfg_aliases-f1737816cd1ea6d5.d: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cfg_aliases-0.2.2/src/lib.rs

/work/wt/jail/target-rel/release/deps/libcfg_aliases-f1737816cd1ea6d5.rlib: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cfg_aliases-0.2.2/src/lib.rs

/work/wt/jail/target-rel/release/deps/libcfg_aliases-f1737816cd1ea6d5.rmeta: /root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cfg_aliases-0.2.2/src/lib.rs

/root/.cargo/registry/src/index.crates.io-1949cf8c6b5b557f/cfg_aliases-0.2.2/src/lib.rs:
