# livegate — `make test` is THE test command (CI: .ci/run).
SHELL := /bin/bash
.SHELLFLAGS := -eu -o pipefail -c
# rustup installs into ~/.cargo/bin, which a fresh shell may not have on PATH yet.
export PATH := $(HOME)/.cargo/bin:$(PATH)
CARGO ?= cargo
ARGS ?=

.PHONY: all setup build run test test-loaded bench fuzz lint fmt clean distclean

all: build

setup:
	bash scripts/setup.sh

build:
	$(CARGO) build --release

# Runs on the embedded default config: RTMP :1935, HTTP(-FLV) :8080.
run: setup build
	./target/release/livegate serve $(ARGS)

test: setup
	$(CARGO) test
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

# The suite with both cores busy (stress-ng beside it): what the tests must survive, as ARCHITECTURE asks.
test-loaded: setup
	stress-ng --cpu 2 --timeout 3600s --quiet & pid=$$!; trap 'kill $$pid 2>/dev/null' EXIT; $(CARGO) test

bench:
	$(CARGO) bench

# Coverage-guided fuzzing of every parser of untrusted input, FUZZ_SECS (default 60) per target. `make test`
# runs the same targets over the corpus and a fixed mutation budget (tests/fuzz.rs).
FUZZ_SECS ?= 60
fuzz: setup
	bash scripts/fuzz.sh $(FUZZ_SECS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --all-targets -- -D warnings

fmt:
	$(CARGO) fmt --all

clean:
	$(CARGO) clean
	rm -rf recordings tests/browser/*.png tests/browser/out

distclean: clean
	rm -rf tests/browser/node_modules
