# The two commands a newcomer needs: `make run` and `make test`. Both install into .venv first.
PYTHON ?= $(shell command -v python3.11 || command -v python3)
VENV   := .venv
BIN    := $(VENV)/bin
STAMP  := $(VENV)/.installed-stamp
# The lock: every package of .venv pinned with its sha256 hashes, refreshed from settings.ini by `make lock` with uv,
# itself pinned (and hashed, in requirements-uv.lock). `make install` installs exactly these, then the project --no-deps.
UV_VERSION := 0.13.9
LOCK       := requirements.lock
UV_LOCK    := requirements-uv.lock
UV         := $(BIN)/uv
# Ploomber's Jupyter extension needs a synchronous contents manager under JupyterLab 4. setup.py ships
# this file as data_files, but editable installs skip data_files (pypa/setuptools#3399): copy it here.
JUPYTER_CONFIG := jupyter-config/jupyter_server_config.json
export PLOOMBER_STATS_ENABLED := false
export PLOOMBER_VERSION_CHECK_DISABLED := true

.PHONY: install lock run test test-fast sync outputs lab bench airflow clean help

help:  ## list the targets
	@grep -E '^[a-z-]+:.*## ' Makefile | sed 's/:.*## /\t/'

$(UV): $(UV_LOCK)
	test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --require-hashes --no-deps -r $(UV_LOCK)
	touch $(UV)

# Bytecode is compiled at install: with PYTHONDONTWRITEBYTECODE set (as on this team's machines and CI) nothing else
# writes it, and every process compiles what it imports again (mlflow, sklearn, pandas, papermill: 12.7 s -> 6.5 s).
$(STAMP): $(UV) $(LOCK) settings.ini setup.py pyproject.toml $(JUPYTER_CONFIG) jupyter-config/labconfig/page_config.json
	$(UV) pip sync --python $(BIN)/python --require-hashes --only-binary :all: --compile-bytecode $(LOCK) $(UV_LOCK)
	$(UV) pip install --python $(BIN)/python --no-deps --no-build-isolation -e .
	mkdir -p $(VENV)/etc/jupyter/labconfig && cp $(JUPYTER_CONFIG) $(VENV)/etc/jupyter/
	cp jupyter-config/labconfig/page_config.json $(VENV)/etc/jupyter/labconfig/
	touch $(STAMP)

install: $(STAMP)  ## create .venv with exactly the locked packages (requirements.lock), then the project itself

# The lock's input: settings.ini's requirements and dev requirements, the build backend (pyproject.toml) and pip.
define LOCK_INPUT
import configparser, tomllib
cfg = configparser.ConfigParser(delimiters=["="]); cfg.read("settings.ini")
build = tomllib.load(open("pyproject.toml", "rb"))["build-system"]["requires"]
print("\n".join([*cfg["DEFAULT"]["requirements"].split(), *cfg["DEFAULT"]["dev_requirements"].split(), *build, "pip"]))
endef
export LOCK_INPUT

# Pins already in the lock are kept while settings.ini admits them; `make lock UPGRADE=--upgrade` takes the newest of all.
UPGRADE ?=
lock: $(UV)  ## refresh requirements.lock from settings.ini (hashes for every platform); UPGRADE=--upgrade: newest versions
	$(BIN)/python -c "$$LOCK_INPUT" | $(UV) pip compile - --universal --python-version $(shell sed -n 's/^min_python *= *//p' settings.ini) \
	    --generate-hashes $(UPGRADE) --custom-compile-command "make lock" --quiet -o $(LOCK)
	echo "uv==$(UV_VERSION)" | $(UV) pip compile - --universal --generate-hashes --upgrade \
	    --custom-compile-command "make lock" --quiet -o $(UV_LOCK)

run: $(STAMP)  ## build the reference pipeline on the embedded default data
	$(BIN)/mlopsnb run

# nbdev_test runs beside pytest (its log shown after pytest's): pytest leaves a core idle a quarter of the time
test: $(STAMP)  ## run every test: nbdev_test (library notebooks) beside pytest (tests/, two workers: one per core)
	@log=$$(mktemp); $(BIN)/nbdev_test --path notebooks/api --do_print --flags slow > $$log 2>&1 & nb=$$!; \
	$(BIN)/python -m pytest tests -n 2 --dist loadfile --durations=25; py=$$?; \
	wait $$nb; nbrc=$$?; echo "nbdev_test --path notebooks/api --flags slow (exit $$nbrc):"; cat $$log; rm -f $$log; \
	test $$py = 0 && test $$nbrc = 0

test-fast: $(STAMP)  ## library notebook tests and the fast pytest subset
	$(BIN)/nbdev_test --path notebooks/api
	$(BIN)/python -m pytest tests -m "not slow" -n 2

sync: $(STAMP)  ## export the library from notebooks/api and clean notebook metadata
	$(BIN)/nbdev_export
	$(BIN)/nbdev_clean

outputs: $(STAMP)  ## run the library notebooks' examples and keep what they show (NB=notebooks/api/X.ipynb: one)
	OMP_NUM_THREADS=1 $(BIN)/python tools/notebook_outputs.py $(NB)
	$(BIN)/nbdev_clean

lab: $(STAMP)  ## open JupyterLab 4 on the project (with the setting that keeps it working)
	$(BIN)/mlopsnb lab

bench: $(STAMP)  ## run the benchmarks in bench/ (see bench/README.md)
	$(BIN)/python bench/pipeline.py

# Apache Airflow 3 in a virtualenv of its own (its pins clash with the project's): the exported DAG's tasks call
# the project's own mlopsnb, so this environment needs none of the project's packages. tests/test_airflow.py uses it.
AIRFLOW_VERSION := 3.3.2
AIRFLOW_VENV    := .venv-airflow
AIRFLOW_STAMP   := $(AIRFLOW_VENV)/.installed-$(AIRFLOW_VERSION)

$(AIRFLOW_STAMP):
	rm -rf $(AIRFLOW_VENV)
	$(PYTHON) -m venv $(AIRFLOW_VENV)
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet --upgrade "pip>=24"
	$(AIRFLOW_VENV)/bin/python -m pip install --quiet "apache-airflow==$(AIRFLOW_VERSION)"
	touch $(AIRFLOW_STAMP)

airflow: $(AIRFLOW_STAMP)  ## install Apache Airflow 3 into .venv-airflow (for `mlopsnb export airflow` and its test)

clean:  ## remove products and the local MLflow store (keeps .venv)
	rm -rf products mlruns mlartifacts mlflow.db .mlopsnb
