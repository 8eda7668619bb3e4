# Each target builds its own virtualenv (.venv) so a fresh machine needs only python3.
PYTHON ?= python3
VENV   ?= .venv
PY      = $(VENV)/bin/python
STAMP   = $(VENV)/.installed
AXE_CORE ?= 4.14.1
AXE_JS   = $(VENV)/node/node_modules/axe-core/axe.min.js

.PHONY: demo test bench venv clean proto

$(STAMP): setup.py
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --upgrade --quiet "pip>=24" "setuptools>=69" wheel
	# torch first and pinned: a bare 'torch' requirement would pull the CUDA build
	$(PY) -m pip install --quiet --no-compile "torch==2.13.0"
	$(PY) -m pip install --quiet --no-compile -e ".[dev]"
	# bytecode once, on every core (pip compiles on one: 109 s against 89 s for the whole install);
	# a few packages ship files that do not compile, which pip skips too, hence the '-'
	-$(PY) -m compileall -q -j 0 $(VENV)/lib > /dev/null 2>&1
	touch $(STAMP)

# axe-core (MPL-2.0), for the UI tests' accessibility audit: from npm into the venv, not the
# repository; tests/test_ui_truth.py injects it into the pages and says it skipped the audit
# without it (no npm, no registry), so its absence never fails the build
$(AXE_JS):
	-command -v npm > /dev/null && npm install --prefix $(VENV)/node --no-audit --no-fund --silent axe-core@$(AXE_CORE)

venv: $(STAMP)

demo: $(STAMP)
	$(VENV)/bin/fedtier sandbox --project test_projects/digits --combiners 2 --clients 5 --rounds 5 --exit-when-done --summary demo-summary.json

test: $(STAMP) $(AXE_JS)
	$(PY) -m pytest -q tests

bench: $(STAMP)
	$(PY) bench/run_all.py

proto: $(STAMP)
	$(PY) -m fedtier.proto.generate

clean:
	rm -rf $(VENV) .pytest_cache demo-summary.json
