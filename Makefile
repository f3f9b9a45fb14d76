# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
# tox looks for python3.10 ... python3.13 on PATH: put each pyenv-installed
# CPython 3.10-3.13 (the newest of each) on it directly, not through shims.
PYENV_BINS := $(shell command -v pyenv >/dev/null 2>&1 && root=$$(pyenv root) && ls -d $$root/versions/3.1[0-3].* 2>/dev/null | sort -t. -k2,2n -k3,3n | awk -F/ '{split($$NF, v, "."); last[v[1]"."v[2]] = $$0} END {for (k in last) print last[k] "/bin"}' | paste -sd: -)

.PHONY: run test fuzz bench venv clean

$(VENV)/bin/twistd: setup.py
	$(PYTHON) -m venv $(VENV)
	$(VENV)/bin/pip install -q --upgrade pip
	$(VENV)/bin/pip install -q .
	touch $@

venv: $(VENV)/bin/twistd

## Run the gateway on port 8000 (a local directory backend when no cluster is configured).
run: venv
	$(VENV)/bin/pip install -q --no-deps --force-reinstall .
	$(VENV)/bin/twistd -n --pidfile= brigade-cr $(ARGS)

## Run every test environment: Python 3.10 to 3.13, lint and typecheck.
test:
	$(PYTHON) -m venv .venv-tox
	.venv-tox/bin/pip install -q --upgrade pip 'tox>=4.11'
	PATH="$(if $(PYENV_BINS),$(PYENV_BINS):)$$PATH" .venv-tox/bin/tox run $(TOXARGS)

## The fast run: Python 3.11 only, without the `slow` tests (those that start a process or
## listen on a real socket), with a developer's Hypothesis profile (not tox's "ci"); under 30 s
## once tox has built its environment.
.PHONY: test-fast
test-fast:
	HYPOTHESIS_PROFILE=default $(MAKE) test TOXARGS="-e py311 -- -m 'not slow' $(TOXARGS)"

PROPERTY_TESTS = $(shell grep -l '@given' tests/test_*.py)

## Explore with Hypothesis: fresh random examples, many more of them (not run by CI).
fuzz:
	$(PYTHON) -m venv .venv-tox
	.venv-tox/bin/pip install -q --upgrade pip 'tox>=4.11'
	PATH="$(if $(PYENV_BINS),$(PYENV_BINS):)$$PATH" HYPOTHESIS_PROFILE=explore .venv-tox/bin/tox run -e py311 -- $(PROPERTY_TESTS) $(TOXARGS)

## Measure acknowledgements, bursts and cost per delivery against a bare twisted.web resource
## (needs wrk: apt-get install -y wrk; see docs/performance.md). E.g. make bench BENCHARGS=--quick
BENCH_PYTHON ?= $(VENV)/bin/python
bench: $(if $(filter $(VENV)/bin/python,$(BENCH_PYTHON)),venv)
	$(BENCH_PYTHON) bench/bench_burst.py $(BENCHARGS)

clean:
	rm -rf $(VENV) .venv-tox .tox build *.egg-info
