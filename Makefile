# Quill — build, run, test, measure, install.
PREFIX ?= /usr/local
DESTDIR ?=
BINDIR = $(DESTDIR)$(PREFIX)/bin
MANDIR = $(DESTDIR)$(PREFIX)/share/man
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

# The test suite: unit tests, then the integration tests that run the real binaries.
test: all
	$(CARGO) test --release --no-fail-fast -- --test-threads=2

bench: all
	tests/bench/run

soak: all
	QUILL_SOAK=1 $(CARGO) test --release -- --ignored --test-threads=1

check:
	$(CARGO) fmt --check
	$(CARGO) clippy --release --all-targets -- -D warnings
	$(MAKE) test

install: all
	install -d $(BINDIR) $(MANDIR)/man1 $(MANDIR)/man5 $(MANDIR)/man8
	for p in $(PROGRAMS); do install -m 0755 target/release/$$p $(BINDIR)/$$p; done
	for m in doc/*.1; do [ -e "$$m" ] && install -m 0644 $$m $(MANDIR)/man1/ || true; done
	for m in doc/*.5; do [ -e "$$m" ] && install -m 0644 $$m $(MANDIR)/man5/ || true; done
	for m in doc/*.8; do [ -e "$$m" ] && install -m 0644 $$m $(MANDIR)/man8/ || true; done
	@echo "quill-queue must be setuid quillq: run 'quill setup' as root, or"
	@echo "  chown quillq $(BINDIR)/quill-queue && chmod 4711 $(BINDIR)/quill-queue"

clean:
	$(CARGO) clean
	rm -rf run
