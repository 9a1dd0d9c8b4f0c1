# edgedepot: `make test` and `make demo` each set up everything they need.
PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
DEB_TOOLS := dpkg-dev gnupg apt xz-utils zstd haproxy
# the console's browser test drives Debian's Chromium through Selenium
TEST_TOOLS := chromium chromium-driver
# every peer the benchmarks compare against (benchmarks/*.py), plus what they drive it with
BENCH_TOOLS := apt-cacher-ng nginx-light wrk rsync zsync curl zstd

.PHONY: venv debtools testtools benchtools test demo bench lint clean

$(VENV)/.installed: pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test]'
	touch $@

venv: $(VENV)/.installed

debtools:
	@missing=""; for p in $(DEB_TOOLS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

testtools: debtools
	@missing=""; for p in $(TEST_TOOLS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

test: venv debtools testtools
	$(VENV)/bin/pytest -q

demo: venv debtools
	$(VENV)/bin/distro-sync demo

benchtools: debtools
	@missing=""; for p in $(BENCH_TOOLS); do dpkg -s $$p >/dev/null 2>&1 || missing="$$missing $$p"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq $$missing; fi

# both benchmarks run, even when the first reports a failure; the exit code says if any did
bench: venv benchtools
	$(PY) -m benchmarks.cache_node; a=$$?; $(PY) -m benchmarks.siblings; b=$$?; exit $$((a | b))

lint: venv
	$(VENV)/bin/ruff check distro cache_node syncer tests benchmarks
	$(VENV)/bin/mypy
	$(VENV)/bin/lint-imports

clean:
	rm -rf $(VENV) build *.egg-info .pytest_cache
