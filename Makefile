# Two commands set everything up on a fresh machine:  make demo   and   make test.
PYTHON ?= python3
VENV   := .venv
PY     := $(VENV)/bin/python
PIP    := $(PY) -m pip
# CPU build by default. For CUDA: make TORCH_SPEC="torch==2.13.0" TORCH_INDEX="--index-url https://download.pytorch.org/whl/cu126"
TORCH_SPEC  ?= torch==2.13.0
TORCH_INDEX ?=
STAMP  := $(VENV)/.installed
TEST_STAMP := $(VENV)/.installed-test

.PHONY: demo test install lint clean

$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	# torch first and pinned: an unpinned torch (or one pulled in by monai) would be a CUDA build.
	$(PIP) install -q $(TORCH_INDEX) "$(TORCH_SPEC)"
	$(PIP) install -q -e ".[test,fast,web]"
	touch $(STAMP)

# nnU-Net v2 only for its dataset integrity check in the tests (see requirements/).
$(TEST_STAMP): $(STAMP) requirements/nnunet-check-nodeps.txt requirements/nnunet-check-deps.txt
	$(PIP) install -q -r requirements/nnunet-check-deps.txt
	$(PIP) install -q --no-deps -r requirements/nnunet-check-nodeps.txt
	touch $(TEST_STAMP)

install: $(STAMP)

DEMO_PROMPT ?= 68-year-old man, 4 cm sigmoid colon cancer, mild splenomegaly, portal venous phase

demo: $(STAMP)
	$(VENV)/bin/guidegen generate --prompt "$(DEMO_PROMPT)" --seed 0 --out demo-output --overwrite

test: $(TEST_STAMP)
	$(VENV)/bin/lint-imports
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .
	GUIDEGEN_REQUIRE_NNUNET=1 $(PY) -m pytest -n 2 -q

clean:
	rm -rf $(VENV) demo-output .pytest_cache
