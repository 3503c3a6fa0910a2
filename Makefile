# Tether — developer entry points. `make help` lists them.

CARGO ?= cargo
# nextest when present (parallel, per-test processes), cargo test otherwise.
TEST_RUNNER := $(shell $(CARGO) nextest --version >/dev/null 2>&1 && echo "nextest run" || echo test)

# Routers and small boards; `make edge` builds and tests them (see README).
EDGE_TARGETS := armv7-unknown-linux-musleabihf arm-unknown-linux-musleabi \
	mips-unknown-linux-musl mipsel-unknown-linux-musl
# The edge tests are #[ignore]d in the default run; these select them.
ifeq ($(TEST_RUNNER),test)
EDGE_TESTS := test -p tether --test tests -- --ignored cross_arch:: packages::
else
EDGE_TESTS := nextest run -p tether --test tests --run-ignored only -E 'test(/^(cross_arch|packages)::/)'
endif
SHELL_SCRIPTS := build.sh .ci/run server/web/build.sh fuzz/run.sh packaging/*.sh packaging/*/*.sh \
	packaging/debian/postinst packaging/debian/prerm packaging/debian/postrm \
	packaging/alpine/APKBUILD packaging/alpine/tether.initd packaging/openwrt/tether/files/tether.init

.PHONY: help build web run test edge lint bench static release packages vendor clean fuzz fuzz-ci

help:
	@echo "make run      build, start a dev server and a local runner connected to it"
	@echo "make test     build everything (incl. static release runners) and run every test"
	@echo "make lint     cargo fmt --check and clippy -D warnings"
	@echo "make web      the dashboard's libraries from npm (make build does it)"
	@echo "make bench    footprint benchmarks: sizes, RSS, idle CPU and bytes, 1,000 runners"
	@echo "make edge     build the armv7/armv6/mips/mipsel runners and run their tests under qemu,"
	@echo "              the package tests (dpkg install as root) and the offline vendor build"
	@echo "make release  static stripped runners for all six targets in dist/ (./build.sh --all)"
	@echo "make packages .deb for every runner in dist/, and the vendored source bundle"
	@echo "make vendor   offline source bundle: vendor/ and dist/tether-VERSION-vendored.tar.gz"
	@echo "make fuzz     every fuzz target for FUZZ_SECS (default 60) s each (nightly, cargo-fuzz)"
	@echo "make fuzz-ci  every fuzz target for FUZZ_CI_SECS (default 6) s each: a short check"

build: web
	$(CARGO) build --workspace

# The dashboard's npm libraries into server/web/dist/ (embedded by the server's build.rs).
web:
	sh server/web/build.sh

run: build
	@sh packaging/dev-run.sh

# x86_64 and aarch64: what `make test` needs.
static:
	./build.sh

release:
	./build.sh --all

test: build static
	$(CARGO) $(TEST_RUNNER) --workspace

edge: build static
	./build.sh $(EDGE_TARGETS)
	$(CARGO) $(EDGE_TESTS)

lint:
	$(CARGO) fmt --all -- --check
	$(CARGO) fmt --manifest-path fuzz/Cargo.toml -- --check
	$(CARGO) clippy --workspace --all-targets -- -D warnings
	@command -v shellcheck >/dev/null || { echo "make lint: shellcheck missing (apt-get install shellcheck; .ci/run does)" >&2; exit 1; }
	shellcheck $(SHELL_SCRIPTS)

bench: release
	$(CARGO) build --release -p tether-server --bins
	$(CARGO) bench --bench footprint

packages: vendor
	@for d in dist/*/tether; do t=$${d#dist/}; packaging/debian/build-deb.sh "$${t%/tether}" || exit 1; done

vendor:
	packaging/vendor.sh

# libFuzzer targets in fuzz/ (README "Fuzzing"); FUZZ_TARGETS="a b" picks some.
FUZZ_SECS ?= 60
FUZZ_CI_SECS ?= 6
fuzz:
	fuzz/run.sh $(FUZZ_SECS)

fuzz-ci:
	fuzz/run.sh $(FUZZ_CI_SECS)

clean:
	$(CARGO) clean
	rm -rf dist .run server/web/dist
