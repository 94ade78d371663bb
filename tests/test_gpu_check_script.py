"""scripts/gpu_check.sh's control flow, run on the CPU against a stand-in `python` that answers its GPU probes and
records its steps: a mistake here would otherwise show only on a GPU machine, whose minutes are few."""
import json
import os
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# Answers the script's probes as a GPU machine with the carried build would, logs every call, makes
# bench/train_step.py take FAKE_SECONDS_<case> seconds, and runs scripts/inductor_cache.py with the real Python.
_FAKE_PYTHON = textwrap.dedent("""\
    #!/usr/bin/env bash
    echo "python $*" >> "$FAKE_LOG"
    if [ "$1" = -c ]; then
      case "$2" in
        *has_cuda_kernels*) exit 0 ;;
        *get_device_name*) echo "Fake-GPU"; exit 0 ;;
        *get_device_capability*) echo "9.0"; exit 0 ;;
      esac
      exit 3
    fi
    case "$1" in
      setup.py) echo 0123456789abcdef ;;
      scripts/inductor_cache.py) exec "$REAL_PYTHON" "$@" ;;
      bench/train_step.py)
        while [ $# -gt 0 ]; do
          case "$1" in --method) method=$2 ;; --out) out=$2 ;; esac
          shift
        done
        var="FAKE_SECONDS_${method//-/_}"
        sleep "${!var:-0}"
        echo '{"rows": []}' > "$out" ;;
    esac
    exit 0
""")


def _run_gpu_check(tmp_path, **env):
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "python"
    fake.write_text(_FAKE_PYTHON)
    fake.chmod(fake.stat().st_mode | stat.S_IEXEC)
    log = tmp_path / "calls.log"
    full_env = {**os.environ, "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}", "FAKE_LOG": str(log),
                "REAL_PYTHON": sys.executable, **env}
    for name in ("REIDFAST_GPU_CHECK_BUDGET", "REIDFAST_INDUCTOR_CACHE_IN", "REIDFAST_INDUCTOR_CACHE_OUT"):
        if name not in env:
            full_env.pop(name, None)
    done = subprocess.run(["bash", str(ROOT / "scripts" / "gpu_check.sh"), str(tmp_path / "results")], env=full_env,
                          capture_output=True, text=True, timeout=300)
    return done, log.read_text().splitlines() if log.exists() else []


def _timeouts_of_training_cases(output: str) -> dict:
    """{case: seconds} from the script's '== training iterations: CASE (...), at most Ns' lines."""
    limits = {}
    for line in output.splitlines():
        if line.startswith("== training iterations:") and "at most" in line:
            limits[line.split(":")[1].split()[0]] = int(line.rsplit("at most ", 1)[1].rstrip("s"))
    return limits


def test_a_time_budget_cuts_the_cases_timeouts_and_skips_what_does_not_fit(tmp_path):
    done, calls = _run_gpu_check(
        tmp_path, REIDFAST_GPU_CHECK_BUDGET="100", REIDFAST_GPU_TESTS="none", REIDFAST_BENCH_ONLY="train",
        REIDFAST_TRAIN_CASES="dgnet:reference,reidfast sagan fdgan", REIDFAST_TRAIN_TIMEOUT="40",
        FAKE_SECONDS_dgnet="2", FAKE_SECONDS_sagan="12")
    assert done.returncode == 0, done.stdout + done.stderr
    limits = _timeouts_of_training_cases(done.stdout)
    # 100 s less 30 for packing: dgnet keeps its 40 s; sagan, started ~2 s later, keeps 40 (about 68 left); fdgan,
    # started ~14 s in, gets what is left (about 56 s, under 60): skipped
    assert limits == {"dgnet": 40, "sagan": 40}, done.stdout
    assert "== training iterations: fdgan (reference,no-compile,reidfast): SKIPPED, the time budget is spent" \
        in done.stdout
    train_calls = [c for c in calls if "bench/train_step.py" in c]
    assert len(train_calls) == 2 and "--configs reference,reidfast" in train_calls[0]
    assert json.loads(next((tmp_path / "results").glob("*train-sagan.json")).read_text()) == {"rows": []}


def test_without_a_budget_each_case_gets_its_own_timeout(tmp_path):
    done, _ = _run_gpu_check(tmp_path, REIDFAST_GPU_TESTS="none", REIDFAST_BENCH_ONLY="train",
                             REIDFAST_TRAIN_CASES="dgnet sagan", REIDFAST_TRAIN_TIMEOUT="540")
    assert done.returncode == 0, done.stdout + done.stderr
    assert _timeouts_of_training_cases(done.stdout) == {"dgnet": 540, "sagan": 540}


def test_a_budget_that_is_not_whole_seconds_is_refused(tmp_path):
    done, calls = _run_gpu_check(tmp_path, REIDFAST_GPU_CHECK_BUDGET="9m")
    assert done.returncode == 2
    assert "REIDFAST_GPU_CHECK_BUDGET: expected whole seconds, got '9m'" in done.stdout
    assert calls == []  # refused before anything ran


def test_compiled_graphs_are_restored_before_the_cases_and_packed_after(tmp_path):
    carried = tmp_path / "carried"
    source = tmp_path / "earlier-cache" / "fxgraph" / "ab"
    source.mkdir(parents=True)
    (source / "entry").write_bytes(b"a compiled graph")
    packed = subprocess.run([sys.executable, str(ROOT / "scripts" / "inductor_cache.py"), "pack",
                             str(tmp_path / "earlier-cache"), str(carried)], capture_output=True, text=True)
    assert packed.returncode == 0, packed.stderr
    cache = tmp_path / "inductor"
    done, calls = _run_gpu_check(tmp_path, REIDFAST_GPU_TESTS="none", REIDFAST_BENCH_ONLY="train",
                                 REIDFAST_TRAIN_CASES="dgnet", REIDFAST_INDUCTOR_CACHE_IN=str(carried),
                                 REIDFAST_INDUCTOR_CACHE_OUT=str(tmp_path / "out"), TORCHINDUCTOR_CACHE_DIR=str(cache))
    assert done.returncode == 0, done.stdout + done.stderr
    assert (cache / "fxgraph" / "ab" / "entry").read_bytes() == b"a compiled graph"
    order = [c.split()[1] for c in calls if "inductor_cache.py" in c or "train_step.py" in c]
    assert order == ["scripts/inductor_cache.py", "bench/train_step.py", "scripts/inductor_cache.py"]
    assert "restored 1 files" in done.stdout and "in 1 part(s) under" in done.stdout
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["inductor-cache.tgz.000"]
