# gpuwarm. `make demo` and `make test` set up a fresh Debian 12 machine first.
GO        ?= go
BIN       := bin/gpuwarm
CRIU      ?= /opt/gpuwarm/criu/bin/criu
VERSITYGW ?= /opt/gpuwarm/bin/versitygw
export GPUWARM_CRIU ?= $(CRIU)
export GPUWARM_VERSITYGW ?= $(VERSITYGW)
# go-nvml's header marks functions deprecated that it still wraps.
export CGO_CFLAGS ?= -O2 -g -Wno-deprecated-declarations

# The concurrent packages: the mount (block cache, transports), the store
# clients, prefetch, and the restore's page server and lazy-pages daemon.
RACEPKGS := ./fusefs/... ./manifest/store/... ./prefetch/... ./restore/pageserver/... ./restore/lazypages/... ./restore/weights/...

.PHONY: all build setup test test-unit test-e2e race race-e2e fuzz vet demo bench bench-gpu bench-gpu-driver test-gpu clean

all: build

# The binary records its VCS revision (gpuwarm --version) and git describe.
VERSION ?= $(shell git describe --tags --always --dirty 2>/dev/null)
build:
	$(GO) build -buildvcs=auto -ldflags "-X main.version=$(VERSION)" -o $(BIN) ./cmd/gpuwarm

setup:
	bash scripts/setup.sh

vet:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	$(GO) mod tidy -diff

# Unit tests, race detector on the concurrent packages, short fuzz runs of
# every decoder, then the end-to-end tests with real FUSE, CRIU and S3.
# The fuzz runs are counted in executions, not seconds: a duration can end
# in a spurious "context deadline exceeded" failure of Go's fuzz
# coordinator before Go 1.27 (golang/go#75804), which failed a run here.
test: setup build vet
	$(GO) test -count=1 ./...
	cd deploy/kubernetes/validate && $(GO) test -count=1 ./...
	$(GO) test -count=1 -race $(RACEPKGS)
	$(MAKE) race-e2e
	$(MAKE) fuzz FUZZTIME=200000x FUZZTIME_FS=20000x

# The mount daemon under the race detector, driven by the end-to-end tests
# of the mount, passthrough, page cache and prefetch replays.
RACELOG := $(CURDIR)/bin/race
race-e2e:
	rm -rf $(RACELOG) && mkdir -p $(RACELOG)
	GPUWARM_E2E_RACE=1 GORACE=log_path=$(RACELOG)/gpuwarm $(GO) test -count=1 -run 'Mount|Passthrough|Page|Assembl|Corrupt|Tiny|Concurrent|Record|Signal|Open|Random' ./testing/e2e
	@if ls $(RACELOG)/* >/dev/null 2>&1; then cat $(RACELOG)/*; echo "data race in the mount daemon"; exit 1; fi

test-unit:
	$(GO) test -count=1 $$(go list ./... | grep -v /testing/e2e)

race:
	$(GO) test -count=1 -race $(RACEPKGS)

FUZZTIME ?= 30s
FUZZTIME_FS ?= $(FUZZTIME)
fuzz:
	$(GO) test ./manifest -run='^$$' -fuzz=FuzzDecode -fuzztime=$(FUZZTIME)
	$(GO) test ./manifest/chunk -run='^$$' -fuzz=FuzzDecode -fuzztime=$(FUZZTIME)
	$(GO) test ./restore/pageserver -run='^$$' -fuzz=FuzzReceiver -fuzztime=$(FUZZTIME)
	$(GO) test ./restore/pageserver -run='^$$' -fuzz=FuzzSender -fuzztime=$(FUZZTIME)
	$(GO) test ./restore/pageserver -run='^$$' -fuzz=FuzzDecodePagemap -fuzztime=$(FUZZTIME)
	$(GO) test ./prefetch -run='^$$' -fuzz=FuzzDecode -fuzztime=$(FUZZTIME)
	$(GO) test ./restore/lazypages -run='^$$' -fuzz=FuzzDecodeMM -fuzztime=$(FUZZTIME)
	$(GO) test ./fusefs/cache -run='^$$' -fuzz=FuzzProcStat -fuzztime=$(FUZZTIME)
	$(GO) test ./fusefs/cache -run='^$$' -fuzz=FuzzJournal -fuzztime=$(FUZZTIME)
	$(GO) test ./fusefs/transport/uring -run='^$$' -fuzz=FuzzParseCPUList -fuzztime=$(FUZZTIME)
	$(GO) test ./restore/weights -run='^$$' -fuzz=FuzzParseReply -fuzztime=$(FUZZTIME)
	$(GO) test ./restore -run='^$$' -fuzz=FuzzParseWeightsMeta -fuzztime=$(FUZZTIME)
	$(GO) test ./internal/inflate -run='^$$' -fuzz=FuzzInflate -fuzztime=$(FUZZTIME)
	# Each input makes files and device nodes (about 1 ms): a tenth of the
	# executions, and a bounded minimization of what it finds new.
	$(GO) test ./restore/container -run='^$$' -fuzz=FuzzApplyDiff -fuzztime=$(FUZZTIME_FS) -fuzzminimizetime=200x

# Packs Python's standard library, mounts it, runs python3 from the mount
# cold, warm and hot, and prints a timing table.
demo: setup build
	bash scripts/demo.sh

bench: setup build
	$(GO) run ./testing/bench

# On a machine with an NVIDIA GPU (skips, saying why, elsewhere).
# GPUCHECK: a prebuilt gpucheck binary for a GPU machine without Go
# (go build -o gpucheck ./testing/gpucheck here, then make -o build test-gpu
# GPUCHECK=./gpucheck there).
GPUCHECK ?= $(GO) run ./testing/gpucheck
test-gpu: build
	$(GPUCHECK) -mode test -gb 1 -disk-cache-gb 8
	$(GPUCHECK) -mode weights -gb 1.1 -disk-cache-gb 40 -mem-cache-gb 24

bench-gpu: build
	$(GPUCHECK) -mode bench -gb 2.2,16 -mem-cache-gb 24 -disk-cache-gb 8
	$(GPUCHECK) -mode weights -gb 1.1,16 -transparent -mem-cache-gb 40 -disk-cache-gb 40

# The CUDA driver's own checkpoint/restore in place (no CRIU): the floor
# under any GPU restore, with the host copy in 4 KiB and in 2 MiB pages.
bench-gpu-driver: build
	$(GPUCHECK) -mode driver -gb 16,3

clean:
	rm -rf bin
