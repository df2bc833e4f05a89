PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
# Xvfb, Mesa's OpenGL and the X libraries Qt's xcb platform plugin needs (napari tests).
QT_APT := xvfb libgl1 libegl1 libgl1-mesa-dri libxkbcommon-x11-0 libxcb-icccm4 \
  libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
  libxcb-xfixes0 libxcb-shape0 libxcb-cursor0 libfontconfig1 libdbus-1-3

.PHONY: install test lint format clean

install:
	$(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --upgrade pip
	$(BIN)/python -m pip install -c constraints.txt -e ".[dev]"
	# Tiny random-weight SAM and CLIP for the smoke benchmark (machinery only, not quality).
	$(BIN)/python -m tests.tiny_models build/smoke-models
	# System tools some tests use, where this machine can install them (root and apt-get):
	# Debian's chromium (the HTML viewer's browser test), dicom3tools (dciodvfy checks
	# the DICOM SEG), and Xvfb with Mesa's OpenGL and the libraries Qt's xcb platform loads
	# (the napari plugin's tests). Without them those tests skip and say why.
	@if ! command -v chromium >/dev/null || ! command -v dciodvfy >/dev/null \
	    || ! command -v Xvfb >/dev/null; then \
	  if command -v apt-get >/dev/null && [ "$$(id -u)" = 0 ]; then \
	    (apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
	      apt-get install -y -qq chromium dicom3tools $(QT_APT) >/dev/null) \
	    || echo "make install: apt-get could not install chromium, dicom3tools and Xvfb"; \
	  else \
	    echo "make install: install chromium, dicom3tools and $(QT_APT) (as root) to run their tests"; \
	  fi; \
	fi

test:
	$(BIN)/python -m ruff check salip benchmarks tests
	$(BIN)/python -m ruff format --check salip benchmarks tests
	$(BIN)/python -m pytest -q

lint:
	$(BIN)/python -m ruff check salip benchmarks tests

format:
	$(BIN)/python -m ruff format salip benchmarks tests
	$(BIN)/python -m ruff check --fix salip benchmarks tests

clean:
	rm -rf $(VENV) build dist *.egg-info .pytest_cache .ruff_cache
