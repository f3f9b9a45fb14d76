# The two commands a newcomer needs: `make run` and `make test`.
PYTHON ?= python3
VENV := .venv
# tox finds python3.10 ... python3.13 through pyenv's shims when they are all active.
PYENV_ALL := $(shell command -v pyenv >/dev/null 2>&1 && pyenv versions --bare | grep -E '^3\.1[0-3]\.' | sort -t. -k2,2n -k3,3n | awk -F. '{v[$$1"."$$2]=$$0} END {for (k in v) print v[k]}' | paste -sd: -)

.PHONY: run test venv clean

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
	PYENV_VERSION="$(PYENV_ALL)$${PYENV_VERSION:+:$$PYENV_VERSION}" .venv-tox/bin/tox run $(TOXARGS)

clean:
	rm -rf $(VENV) .venv-tox .tox build *.egg-info
