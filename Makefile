# Quill — build, run, test, measure, install.
SHELL := /bin/bash
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR = $(DESTDIR)$(PREFIX)/bin
MANDIR = $(DESTDIR)$(PREFIX)/share/man
SHAREDIR = $(DESTDIR)$(PREFIX)/share/quill
CARGO ?= cargo
RUN_DIR ?= $(CURDIR)/run
RUN_LISTEN ?= 127.0.0.1:2525

PROGRAMS = $(patsubst src/bin/%.rs,%,$(wildcard src/bin/*.rs))

.PHONY: all run test bench soak check install clean

all:
	$(CARGO) build --release

# A complete instance in ./run, as the current user, in the foreground. Ctrl-C stops it.
run: all
	target/release/quill-up -d $(RUN_DIR) -l $(RUN_LISTEN)

# The test suite: unit tests, then the integration tests that run the real binaries, then the
# fuzz targets' corpus replay (tests/fuzz.rs). Tests that cannot run here print a SKIP line
# through tests/common (cargo hides the output of passing tests, so they also go to
# target/test-skips.log); tests/summary lists them and ends with the one line
# `tests: N passed, N failed, N skipped`. The log is a file followed until cargo exits, not a
# pipe: a daemon a failed test left behind cannot keep `make test` waiting for its end.
test: all
	@mkdir -p target
	@rm -f target/test-skips.log
	@QUILL_SKIP_LOG=$(CURDIR)/target/test-skips.log \
		$(CARGO) test --release --no-fail-fast -- --test-threads=2 >target/test.log 2>&1 & \
	cargo=$$!; \
	tail -n +1 --pid=$$cargo -f target/test.log; \
	wait $$cargo; \
	status=$$?; \
	tests/summary target/test.log target/test-skips.log; \
	exit $$status

bench: all
	tests/bench/run

# The long runs: every #[ignore] test, one at a time (crash tests, load, the fuzz targets for
# QUILL_FUZZ_SECONDS each, 60 by default, and tests/scale.rs: quill-send's memory and pick-up
# time with N deferred messages, N from QUILL_SCALE_N, 1000,10000,100000,200000 by default).
# The fuzzer's figures end up in target/tmp/fuzz-soak.txt, the scale table in
# target/tmp/scale-soak.txt; both are printed at the end.
soak: all
	@rm -f target/tmp/fuzz-soak.txt target/tmp/scale-soak.txt
	@QUILL_SOAK=1 $(CARGO) test --release -- --ignored --test-threads=1; \
	status=$$?; \
	cat target/tmp/fuzz-soak.txt 2>/dev/null; \
	cat target/tmp/scale-soak.txt 2>/dev/null; \
	exit $$status

check:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(MAKE) test

install: all
	install -d $(BINDIR) $(MANDIR)/man1 $(MANDIR)/man5 $(MANDIR)/man8 $(SHAREDIR)
	for p in $(PROGRAMS); do install -m 0755 target/release/$$p $(BINDIR)/$$p; done
	for s in 1 5 8; do for m in doc/*.$$s; do [ -e "$$m" ] && install -m 0644 $$m $(MANDIR)/man$$s/ || true; done; done
	cp -R conf-examples/. $(SHAREDIR)/
	chmod -R u+rwX,go+rX,go-w $(SHAREDIR)
	@# quill-queue is setuid quillq (mode 4711) so that any local user can submit mail. That
	@# needs root and the user; otherwise 'quill setup' (as root) does it later.
	@if [ "$$(id -u)" = 0 ] && id quillq >/dev/null 2>&1; then \
		group=$$(getent group quill >/dev/null && echo :quill); \
		chown quillq$$group $(BINDIR)/quill-queue && chmod 4711 $(BINDIR)/quill-queue && \
		echo "quill-queue: setuid quillq"; \
	else \
		echo "quill-queue is not setuid yet: run 'quill setup' as root (it creates the users and sets it)"; \
	fi

clean:
	$(CARGO) clean
	rm -rf run
