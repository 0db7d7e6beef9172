#!/usr/bin/env bash
# Steering Lab: set up (venv, packages, model cache) and start the app.
#
#   ./run.sh [serve options]     set up what is missing, then `python -m app serve`
#   ./run.sh test [pytest args]  set up what is missing, then run the test suite
#
# Every step is skipped when already done, so a second start goes straight to the app.
# Needs Python 3.11+. Environment: PYTHON (interpreter to build .venv with), STEERING_LAB_CACHE (cache dir).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
cd "$ROOT"
VENV="$ROOT/.venv"
STAMP="$VENV/.requirements.sha256"
CACHE="${STEERING_LAB_CACHE:-$ROOT/cache}"
MIN_PY_MINOR=11  # numpy 2.4, scipy 1.17 and transformers 5.23 need Python 3.11
DEFAULT_MODEL=qwen2.5-coder-0.5b-instruct  # what `python -m app serve` picks on a machine without a GPU
TEST_MODEL=smollm2-135m-instruct           # what the integration tests load

say() { printf '[run.sh] %s\n' "$*"; }
die() { printf '[run.sh] ERROR: %s\n' "$1" >&2; shift; for line in "$@"; do printf '[run.sh]   %s\n' "$line" >&2; done; exit 1; }

mode=serve
if [[ "${1:-}" == "test" ]]; then mode=test; shift; fi

# --- 1. Python >= 3.11 -------------------------------------------------------------------
py_ok() { "$1" -c "import sys; sys.exit(0 if sys.version_info >= (3, $MIN_PY_MINOR) else 1)" 2>/dev/null; }
if [[ -x "$VENV/bin/python" ]]; then
    py_ok "$VENV/bin/python" || die ".venv was made with Python $("$VENV/bin/python" -c 'import platform; print(platform.python_version())'); 3.$MIN_PY_MINOR or newer is needed." \
        "Remove it (rm -rf .venv) and run ./run.sh again; it is rebuilt with a newer Python."
    PY="$VENV/bin/python"
else
    PY=""
    for candidate in ${PYTHON:-} python3.14 python3.13 python3.12 python3.11 python3 python; do
        if command -v "$candidate" >/dev/null 2>&1 && py_ok "$candidate"; then PY="$(command -v "$candidate")"; break; fi
    done
    [[ -n "$PY" ]] || die "Python 3.$MIN_PY_MINOR or newer is needed; found: $(python3 --version 2>&1 || echo 'no python3')." \
        "Install one (Debian 12+/Ubuntu 24.04+: sudo apt-get install python3 python3-venv; older Ubuntu:" \
        "the deadsnakes PPA's python3.11 python3.11-venv; macOS: brew install python@3.11)," \
        "or point PYTHON at one: PYTHON=/path/to/python3.11 ./run.sh"
fi
say "python: $PY ($("$PY" -c 'import platform; print(platform.python_version())'))"

# --- 2. free disk --------------------------------------------------------------------------
free_gb() { df -Pk "$1" | awk 'NR==2 {printf "%d", $4 / 1048576}'; }
need_gb=1
[[ -x "$VENV/bin/python" ]] || need_gb=$((need_gb + 6))                  # torch, transformers, gradio
if ! compgen -G "$CACHE/models/*/config.json" >/dev/null; then
    need_gb=$((need_gb + 4))                                              # two models
elif [[ "$mode" == serve && ! -f "$CACHE/models/$DEFAULT_MODEL/manifest.json" ]]; then
    need_gb=$((need_gb + 3))                                              # the default model
fi
mkdir -p "$CACHE"
have_gb=$(free_gb "$CACHE")
if (( have_gb < need_gb )); then
    die "only ${have_gb} GB free on the disk holding $CACHE; about ${need_gb} GB are needed." \
        "Free some space, or set STEERING_LAB_CACHE to a directory on a bigger disk."
fi
say "disk: ${have_gb} GB free (need about ${need_gb} GB)"

# --- 3. virtual environment ----------------------------------------------------------------
if [[ ! -x "$VENV/bin/python" ]]; then
    say "creating the virtual environment in .venv ..."
    "$PY" -m venv "$VENV" || die "could not create .venv with $PY." \
        "On Debian/Ubuntu install the venv module: sudo apt-get install python3-venv" \
        "then remove the half-made .venv (rm -rf .venv) and run ./run.sh again."
    PY="$VENV/bin/python"
fi
PY="$VENV/bin/python"

# --- 4. packages, only when requirements.txt changed --------------------------------------
want="$("$PY" -c "import hashlib; print(hashlib.sha256(open('requirements.txt', 'rb').read()).hexdigest())")"
if [[ "$(cat "$STAMP" 2>/dev/null)" != "$want" ]]; then
    say "installing packages from requirements.txt into .venv (first time: several minutes) ..."
    t0=$SECONDS
    "$PY" -m pip --version >/dev/null 2>&1 || die ".venv has no pip (a half-made virtual environment?)." \
        "Remove it (rm -rf .venv); on Debian/Ubuntu install the venv module (sudo apt-get install python3-venv); run ./run.sh again."
    "$PY" -m pip install --disable-pip-version-check -r requirements.txt || die "pip install failed (see above)." \
        "Check that PyPI can be reached (a proxy? set HTTPS_PROXY) and that the disk is not full," \
        "then run ./run.sh again: it resumes where it stopped."
    echo "$want" > "$STAMP"
    say "packages installed ($((SECONDS - t0)) s)"
else
    say "packages: up to date (requirements.txt unchanged)"
fi

# --- 5. models in cache/models ------------------------------------------------------------
if [[ "$mode" == test ]]; then
    # The integration tests load SmolLM2; nothing else is needed to test.
    if [[ ! -f "$CACHE/models/$TEST_MODEL/manifest.json" ]]; then
        say "setting up the test model ($TEST_MODEL) in $CACHE/models ..."
        "$ROOT/setup_local_cache.sh" --model "$TEST_MODEL" \
            || die "could not set up $TEST_MODEL (see above)." "Fix the cause and run ./run.sh test again."
    else
        say "models: $TEST_MODEL is set up"
    fi
elif ! compgen -G "$CACHE/models/*/config.json" >/dev/null; then
    say "no model set up in $CACHE/models yet: running ./setup_local_cache.sh (about 3 minutes) ..."
    "$ROOT/setup_local_cache.sh" || die "could not set up a model (see above)." \
        "Fix the cause and run ./run.sh again, or start with a model of your own: ./run.sh --model /path/to/model"
elif [[ ! -f "$CACHE/models/$DEFAULT_MODEL/manifest.json" ]]; then
    # Another model (e.g. SmolLM2 from ./run.sh test) must not stand in for the default one.
    say "setting up the default model ($DEFAULT_MODEL) in $CACHE/models (about 2 minutes) ..."
    "$ROOT/setup_local_cache.sh" --model "$DEFAULT_MODEL" \
        || say "could not set up $DEFAULT_MODEL (see above); starting with the models already set up"
else
    say "models: $(cd "$CACHE/models" && ls -d -- */ 2>/dev/null | tr -d / | tr '\n' ' ')"
fi

say "set-up done in ${SECONDS} s"

# --- 6. run --------------------------------------------------------------------------------
# OpenMP threads that sleep instead of spinning: on a busy machine spinning threads made decoding up
# to 10x slower (docs/performance.md). python -m app sets it too; the tests' own Python processes
# (the README example, test subprocesses) get it from here.
export OMP_WAIT_POLICY="${OMP_WAIT_POLICY:-PASSIVE}"
if [[ "$mode" == test ]]; then
    say "running the tests: python -m pytest $*"
    set +e
    "$PY" -m pytest "$@"
    status=$?
    set -e
    if (( status == 5 )); then
        # pytest's "no tests collected": with a filter that may be intended, without one the suite is broken.
        if (( $# > 0 )); then
            say "no tests matched '$*' (pytest exit code 5); nothing failed."
            exit 0
        fi
        die "pytest collected no tests at all: is the tests/ directory there?"
    fi
    exit "$status"
fi
say "starting the app: python -m app serve $*"
exec "$PY" -m app serve "$@"
