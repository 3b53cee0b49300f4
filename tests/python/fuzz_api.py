"""The API fuzz: Schemathesis drives every operation of a real Chorus from its own /openapi.json.

Usage: python3 tests/python/fuzz_api.py <path to the chorus binary> [extra `st run` arguments]

Starts `chorus dev` (every role in one process, a nats-server child, SQLite, the `sim` provider
and one configured route) in a temporary directory, reads its admin API key, then runs
`st run` with every check (Schemathesis's `positive_data_acceptance` replaced by the stricter
`schema_valid_request_accepted` of fuzz_hooks.py, plus `events_match_their_schemas`) over every
operation: examples, coverage, fuzzing (at most 100 generated cases per operation) and the
stateful phase, which follows the document's links (createJob -> getJob, createFile ->
createBatch -> retrieveBatch, ...). Generation is deterministic, so a run is
reproducible. Exits with Schemathesis's status; prints the wall time and the per-check
summary.
"""

import collections
import json
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request

HERE = pathlib.Path(__file__).resolve().parent
CONFIG = """
[edge]
listen = "127.0.0.1:0"
max_wait = "20s"

[[routes]]
name = "fast"
provider = "sim"
model = "echo"
"""
MAX_EXAMPLES = "100"


def wait_for(url, deadline):
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as response:
                if response.status == 200:
                    return
        except Exception:
            pass
        time.sleep(0.2)
    raise SystemExit(f"Chorus did not become ready at {url}")


def summarize(events):
    """Prints the cases per operation and phase, and each check's outcomes, from Schemathesis's
    event log; returns the number of failed cases."""
    cases = collections.Counter()
    checks = collections.defaultdict(collections.Counter)
    failed = passed = 0
    scenarios = 0
    for line in open(events):
        event = json.loads(line)
        finished = event.get("ScenarioFinished")
        if finished is None:
            continue
        phase = finished["phase"]
        scenarios += phase == "stateful"
        recorder = finished["recorder"]
        for case_id, case in recorder.get("cases", {}).items():
            # A stateful scenario's steps are counted under the operation each step calls.
            value = case["value"]
            label = f"{value['method']} {value['path']}" if phase == "stateful" else recorder["label"]
            cases[(label, phase)] += 1
            results = recorder.get("checks", {}).get(case_id, [])
            for check in results:
                checks[check["name"]][check["status"]] += 1
            if any(check["status"] == "failure" for check in results):
                failed += 1
            else:
                passed += 1
    phases = ["examples", "coverage", "fuzzing", "stateful"]
    operations = sorted({operation for operation, _ in cases})
    print(f"\n{'test cases':<44}" + "".join(f"{p:>10}" for p in phases))
    for operation in operations:
        print(f"{operation:<44}" + "".join(f"{cases[(operation, p)]:>10}" for p in phases))
    print(f"{len(operations)} rows; {scenarios} stateful scenarios")
    print(f"\n{'check':<36}{'passed':>10}{'failed':>10}")
    for name in sorted(checks):
        print(f"{name:<36}{checks[name]['success']:>10}{checks[name]['failure']:>10}")
    print(f"\nfuzz: {passed} passed, {failed} failed", flush=True)
    return failed


def main():
    if len(sys.argv) < 2:
        raise SystemExit(__doc__)
    binary = pathlib.Path(sys.argv[1]).resolve()
    extra = sys.argv[2:]
    st = shutil.which("st") or shutil.which("schemathesis")
    if st is None:
        raise SystemExit("schemathesis is not installed (pip install schemathesis)")
    work = pathlib.Path(tempfile.mkdtemp(prefix="chorus-fuzz-"))
    (work / "chorus.toml").write_text(CONFIG)
    log = open(work / "chorus.log", "w+")
    env = {**os.environ, "RUST_LOG": os.environ.get("RUST_LOG", "warn")}
    chorus = subprocess.Popen(
        [str(binary), "--config", str(work / "chorus.toml"), "dev", "--dir", str(work / "dev")],
        stdout=subprocess.PIPE,
        stderr=log,
        text=True,
        env=env,
        start_new_session=True,
    )
    started = time.monotonic()
    try:
        base = None
        deadline = time.monotonic() + 120
        for line in chorus.stdout:
            match = re.search(r"API:\s+(http://\S+)", line)
            if match:
                base = match.group(1)
                break
            if time.monotonic() > deadline:
                break
        if base is None:
            log.seek(0)
            raise SystemExit(f"chorus dev did not start:\n{log.read()[-4000:]}")
        wait_for(f"{base}/ready", time.monotonic() + 60)
        key = (work / "dev" / "dev-api-key").read_text().strip()
        command = [
            st, "run", f"{base}/openapi.json",
            "--header", f"Authorization: Bearer {key}",
            "--checks", "all",
            "--exclude-checks", "positive_data_acceptance",
            "--phases", "examples,coverage,fuzzing,stateful",
            "--max-examples", MAX_EXAMPLES,
            "--generation-deterministic",
            "--workers", "2",
            "--request-timeout", "60",
            "--continue-on-failure",
            "--no-color",
            "--report", "ndjson",
            "--report-ndjson-path", str(work / "events.ndjson"),
            *extra,
        ]
        shown = [part if not part.startswith("Authorization") else "Authorization: Bearer <admin key>" for part in command]
        print("$", " ".join(shown), flush=True)
        # Drain chorus's stdout so it never blocks on a full pipe.
        fuzz_env = {
            **os.environ,
            "SCHEMATHESIS_HOOKS": "fuzz_hooks",
            "PYTHONPATH": os.pathsep.join(filter(None, [str(HERE), os.environ.get("PYTHONPATH")])),
        }
        fuzz_started = time.monotonic()
        result = subprocess.run(command, env=fuzz_env, cwd=work)
        failed = summarize(work / "events.ndjson")
        print(f"API fuzz: {time.monotonic() - fuzz_started:.0f} s of fuzzing, "
              f"{time.monotonic() - started:.0f} s in all; exit status {result.returncode}", flush=True)
        if failed and result.returncode == 0:
            return 1
        if result.returncode != 0:
            log.seek(0)
            tail = log.read()[-3000:]
            print(f"--- the last of chorus's log ({work / 'chorus.log'}) ---\n{tail}", flush=True)
        return result.returncode
    finally:
        os.killpg(chorus.pid, signal.SIGINT)
        try:
            chorus.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(chorus.pid, signal.SIGKILL)
            chorus.wait()


if __name__ == "__main__":
    sys.exit(main())
