# Tether — developer entry points. `make help` lists them.

CARGO ?= cargo
# The set-up: installs what a level needs, proves it, and is a quick no-op
# when everything is there (packaging/dev-setup.sh --list says what and why).
SETUP := packaging/dev-setup.sh

# Routers and small boards; `make edge` builds and tests them (see README).
EDGE_TARGETS := armv7-unknown-linux-musleabihf arm-unknown-linux-musleabi \
	mips-unknown-linux-musl mipsel-unknown-linux-musl
# The edge tests are #[ignore]d in the default run; these select them.
EDGE_TESTS := nextest run -p tether --test tests --run-ignored only -E 'test(/^(cross_arch|packages)::/)'
SHELL_SCRIPTS := build.sh .ci/run server/web/build.sh fuzz/run.sh packaging/*.sh packaging/*/*.sh \
	packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm \
	packaging/alpine/APKBUILD packaging/alpine/tether.initd packaging/openwrt/tether/files/tether.init

.PHONY: help setup fresh-check build web run test edge lint bench static release packages vendor clean fuzz fuzz-ci

help:
	@echo "make run      set up, build, start a dev server and a local runner connected to it"
	@echo "make test     set up, build everything (incl. static release runners) and run every test"
	@echo "make setup    install and prove everything run, test, lint and edge need (idempotent)"
	@echo "make fresh-check  the set-up and the build on a fresh Debian 12 root (debootstrap; slow)"
	@echo "make lint     cargo fmt --check and clippy -D warnings"
	@echo "make web      the dashboard's libraries from npm (make build does it)"
	@echo "make bench    footprint benchmarks: sizes, RSS, idle CPU and bytes, 1,000 runners"
	@echo "              BENCH_BASE=<rev> puts that revision's figures beside this build's"
	@echo "make edge     build the armv7/armv6/mips/mipsel runners and run their tests under qemu,"
	@echo "              the package tests (dpkg install as root) and the offline vendor build"
	@echo "make release  static stripped runners for all six targets in dist/ (./build.sh --all)"
	@echo "make packages .deb for every runner in dist/, and the vendored source bundle"
	@echo "make vendor   offline source bundle: vendor/ and dist/tether-VERSION-vendored.tar.gz"
	@echo "make fuzz     every fuzz target for FUZZ_SECS (default 60) s each (nightly, cargo-fuzz)"
	@echo "make fuzz-ci  every fuzz target for FUZZ_CI_SECS (default 6) s each: a short check"

setup:
	@$(SETUP) all

fresh-check:
	packaging/fresh-check.sh

build: web
	$(CARGO) build --workspace

# The dashboard's npm libraries into server/web/dist/ (embedded by the server's build.rs).
web:
	sh server/web/build.sh

run:
	@$(SETUP) run
	@$(MAKE) --no-print-directory build
	@sh packaging/dev-run.sh

# x86_64 and aarch64: what `make test` needs.
static:
	./build.sh

release:
	@$(SETUP) all
	./build.sh --all

test:
	@$(SETUP) test
	@$(MAKE) --no-print-directory build static
	$(CARGO) nextest run --workspace

edge:
	@$(SETUP) all
	@$(MAKE) --no-print-directory build static
	./build.sh $(EDGE_TARGETS)
	$(CARGO) $(EDGE_TESTS)

lint:
	@$(SETUP) test
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	shellcheck $(SHELL_SCRIPTS)

# BENCH_BASE=<git rev>: the same figures for that revision beside this build's
# (tests/bench/compare.rs; built once under target/bench-base/<rev>).
BENCH_BASE ?=
bench: release
	$(CARGO) build --release -p tether-server --bins
	BENCH_BASE=$(BENCH_BASE) $(CARGO) bench --bench footprint

packages: vendor
	@for d in dist/*/tether; do t=$${d#dist/}; packaging/debian/build-deb.sh "$${t%/tether}" || exit 1; done

vendor:
	packaging/vendor.sh

# libFuzzer targets in fuzz/ (README "Fuzzing"); FUZZ_TARGETS="a b" picks some.
FUZZ_SECS ?= 60
FUZZ_CI_SECS ?= 6
fuzz:
	@$(SETUP) all
	fuzz/run.sh $(FUZZ_SECS)

fuzz-ci:
	@$(SETUP) all
	fuzz/run.sh $(FUZZ_CI_SECS)

clean:
	$(CARGO) clean
	rm -rf dist .run server/web/dist
