#!/usr/bin/env bash
# gasbench on one CUDA GPU, offline, in under 8 minutes: the `gpu`-marked tests, then GAS
# Appendix C's training and sampling figures (benchmarks/gpu/measure.py), written as
# <date>-<gpu>.json and .md. See benchmarks/gpu/README.md.
#
#   benchmarks/gpu/run.sh                  # on the GPU machine: figures into benchmarks/gpu/
#   benchmarks/gpu/run.sh --dry-run --out DIR   # on a CPU: tiny sizes, the same code paths, < 2 minutes
#   benchmarks/gpu/run.sh --prepare        # here, online: the wheels the GPU machine lacks, into .whl/
#
# Options: --out DIR (where the .json and .md go; required with --dry-run), --wheels DIR (default
# .whl), --skip-tests. Environment: PYTHON (default .venv/bin/python if present, else python3);
# SITE (where the wheels go, default /tmp/site); OUT, if set, receives copies of the figures and logs (what the device tool brings back).
set -uo pipefail
cd "$(dirname "$0")/../.."

DRY=0 OUTDIR="" WHEELS=.whl TESTS=1 PREPARE=0
LIMIT_S=480  # the whole run, tests and measurements
while [ $# -gt 0 ]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --out) OUTDIR=${2:?--out needs a folder}; shift ;;
        --wheels) WHEELS=${2:?--wheels needs a folder}; shift ;;
        --skip-tests) TESTS=0 ;;
        --prepare) PREPARE=1 ;;
        -h|--help) sed -n '2,13p' "$0"; exit 0 ;;
        *) echo "run.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
    esac
    shift
done
if [ -z "${PYTHON:-}" ]; then
    if [ -x .venv/bin/python ]; then PYTHON=.venv/bin/python; else PYTHON=python3; fi
fi
SITE=${SITE:-/tmp/site}
export PYTHONUNBUFFERED=1
say() { printf '[gpu-bench %4ss] %s\n' "$SECONDS" "$*"; }

# The packages gasbench needs that the GPU machine's image lacks (its list: the device tool's
# KINDS.md), pure-Python wheels at the versions installed here.
CARRIED="lpips diffusers clean-fid prdc importlib_metadata lazy-importer"
if [ $PREPARE = 1 ]; then
    mkdir -p "$WHEELS"
    case "$WHEELS" in  # a folder in the tree must stay out of commits (the device README's advice)
        /*) ;;
        *) [ -d .git ] && ! grep -qsx "/$WHEELS/" .git/info/exclude && mkdir -p .git/info && echo "/$WHEELS/" >> .git/info/exclude ;;
    esac
    for name in $CARRIED; do
        version=$("$PYTHON" -c "import importlib.metadata as m; print(m.version('$name'))") || exit 1
        say "downloading $name==$version into $WHEELS"
        "$PYTHON" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
            --platform manylinux_2_28_x86_64 --platform manylinux2014_x86_64 -d "$WHEELS" "$name==$version" || exit 1
    done
    say "building gasbench's own wheel into $WHEELS (the fallback if the tree cannot be built there)"
    rm -f "$WHEELS"/gasbench-*.whl
    "$PYTHON" -m pip wheel -q --no-deps --no-build-isolation -w "$WHEELS" . || exit 1
    du -sh "$WHEELS"
    exit 0
fi

if [ $DRY = 1 ] && [ -z "$OUTDIR" ]; then
    echo "run.sh: --dry-run needs --out DIR (dry-run figures are not kept in benchmarks/gpu)" >&2
    exit 2
fi
OUTDIR=${OUTDIR:-benchmarks/gpu}
LOGS=$(mktemp -d)
mkdir -p "$OUTDIR"
export GASBENCH_HOME=$LOGS/home GASBENCH_OFFLINE=1 HF_HUB_OFFLINE=1

copy_out() {  # the device tool brings back what is under $OUT
    if [ -n "${OUT:-}" ] && [ -d "$OUT" ]; then
        cp "$OUTDIR"/*.json "$OUTDIR"/*.md "$LOGS"/gpu-tests.* "$OUT"/ 2>/dev/null
        say "copied the figures and logs to \$OUT ($OUT)"
    fi
}
trap copy_out EXIT

if ls "$WHEELS"/*.whl >/dev/null 2>&1; then
    say "installing $(ls "$WHEELS"/*.whl | wc -l) wheels from $WHEELS and gasbench from this tree into $SITE"
    install() { "$PYTHON" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" "$@"; }
    install $(ls "$WHEELS"/*.whl | grep -v '/gasbench-') || { say "installing the wheels failed"; exit 1; }
    install --no-build-isolation . || { say "building gasbench from the tree failed: installing the wheel --prepare built";
                                        install "$WHEELS"/gasbench-*.whl || exit 1; }
    export PYTHONPATH=$SITE${PYTHONPATH:+:$PYTHONPATH}
else
    say "no wheels in $WHEELS: using the gasbench installed for $PYTHON"
fi
"$PYTHON" -c "import gasbench, torch; print('[gpu-bench] gasbench from', gasbench.__file__, '| torch', torch.__version__, '| cuda', torch.cuda.is_available())" \
    || { say "gasbench is not importable (run --prepare where pip works, and carry .whl)"; exit 1; }
if [ $DRY = 0 ]; then
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader 2>/dev/null || true
fi

TEST_RC=""
if [ $TESTS = 1 ]; then
    say "pytest -m gpu tests/test_gpu.py"
    timeout $((LIMIT_S * 55 / 100)) "$PYTHON" -m pytest -q -m gpu tests/test_gpu.py -p no:cacheprovider \
        --junitxml="$LOGS/gpu-tests.xml" 2>&1 | tee "$LOGS/gpu-tests.log"
    TEST_RC=${PIPESTATUS[0]}
    say "pytest exit status $TEST_RC"
fi

BUDGET=$((LIMIT_S - SECONDS - 60))  # sections that would start after this are skipped
say "measuring (sections started within ${BUDGET} s)"
ARGS=(--out "$OUTDIR" --budget-s "$BUDGET")
[ $DRY = 1 ] && ARGS+=(--dry-run)
[ -n "$TEST_RC" ] && ARGS+=(--tests-xml "$LOGS/gpu-tests.xml" --tests-rc "$TEST_RC")
timeout $((LIMIT_S - SECONDS)) "$PYTHON" benchmarks/gpu/measure.py "${ARGS[@]}"
MEASURE_RC=$?
say "measure.py exit status $MEASURE_RC; done in ${SECONDS} s"
[ "$MEASURE_RC" = 0 ] && [ "${TEST_RC:-0}" = 0 ]
