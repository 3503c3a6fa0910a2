# Tether — developer entry points. `make help` lists them.

CARGO ?= cargo
# nextest when present (parallel, per-test processes), cargo test otherwise.
TEST_RUNNER := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo "nextest run" || echo test)

.PHONY: help build run test lint bench release vendor clean

help:
	@echo "make run      build, start a dev server and a local runner connected to it"
	@echo "make test     build everything (incl. static release runners) and run every test"
	@echo "make lint     cargo fmt --check and clippy -D warnings"
	@echo "make bench    footprint benchmarks: sizes, RSS, idle CPU and bytes, 1,000 runners"
	@echo "make release  static stripped runners in dist/ (./build.sh)"
	@echo "make vendor   offline source bundle in vendor/ for air-gapped builds"

build:
	$(CARGO) build --workspace

run: build
	@sh packaging/dev-run.sh

release:
	./build.sh

test: build release
	$(CARGO) $(TEST_RUNNER) --workspace

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings

bench: release
	$(CARGO) build --release -p tether-server --bins
	$(CARGO) bench --bench footprint

vendor:
	$(CARGO) vendor --locked vendor/crates > vendor/config.toml
	@echo "vendor/: build offline with: cargo build --offline --config vendor/config.toml"

clean:
	$(CARGO) clean
	rm -rf dist .run
