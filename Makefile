# pandaes — two commands do all the set-up on a fresh machine:
#   make run    start broker, database and every component on the embedded defaults
#   make test   install what the tests need and run both floors: tests/unit and tests/integration
#               (the latter against a real broker and database); make test-unit runs the fast floor only
#   make chaos  kill components, the embedded broker and database under load, then check the invariants
PYTHON ?= python3
# tests mostly wait on the broker (group joins, timeouts): three workers overlap that waiting
PYTEST_ARGS ?= -n 3 --dist loadfile
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed

.PHONY: run test test-unit lint bench chaos clean browser

$(STAMP): pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install -q --upgrade pip
	$(PY) -m pip install -q -e '.[test,bench]'
	touch $(STAMP)

run: $(STAMP)
	$(VENV)/bin/pandaes run

test: $(STAMP) browser
	$(PY) -m pytest -q $(PYTEST_ARGS)

# the monitor's browser tests drive Debian's chromium through chromedriver: install both when missing
# (as root, or through password-less sudo; non-interactive; waits for another apt holding the lock)
APT = env DEBIAN_FRONTEND=noninteractive apt-get -y -q -o DPkg::Lock::Timeout=600
browser:
	@if ! command -v chromedriver >/dev/null 2>&1 || ! command -v chromium >/dev/null 2>&1; then \
	  if [ "$$(id -u)" = 0 ]; then SUDO=; elif sudo -n true 2>/dev/null; then SUDO="sudo -n"; \
	  else echo "chromium/chromedriver missing and no root: the browser tests will be skipped"; exit 0; fi; \
	  $$SUDO $(APT) install --no-install-recommends chromium chromium-driver \
	    || { $$SUDO $(APT) update && $$SUDO $(APT) install --no-install-recommends chromium chromium-driver; }; \
	fi

# no broker, no database: seconds, no workers needed
test-unit: $(STAMP)
	$(PY) -m pytest -q tests/unit

lint: $(STAMP)
	$(VENV)/bin/ruff check .

bench: $(STAMP)
	$(VENV)/bin/pandaes bench $(if $(QUICK),--quick,)

# kill random components, the embedded broker and the embedded database under load, then check the
# invariants (docs/reliability.md); e.g. make chaos CHAOS_ARGS="--jobs 100 --kills 5 --duration 40"
CHAOS_ARGS ?= --jobs 1000 --kills 30 --duration 300 --embedded-db
chaos: $(STAMP)
	$(VENV)/bin/pandaes chaos $(CHAOS_ARGS)

clean:
	rm -rf $(VENV) .state
