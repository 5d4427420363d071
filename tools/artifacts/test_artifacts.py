#!/usr/bin/env python3
"""Proves Herald's artifacts by using them as an operator would (run by scripts/test.sh
after scripts/package.sh --image; every artifact is the one release build):

  binary   the static binary, copied alone into an empty directory, serves the console's
           embedded assets (hashed, precompressed, cached) and completes the welcome flow;
           `--version`, `config check` and `doctor` answer as documented
  image    the Podman image, run the way deploy/compose.yaml runs Herald (its user, its
           read-only root, its environment, on Kafka, with `herald migrate` as an init
           step), becomes healthy, completes the welcome flow, logs JSON to stdout, and
           stops cleanly on SIGTERM
  deb      the Debian package installs with apt-get, its unit passes
           `systemd-analyze verify`, and the binary started as the unit's ExecStart
           starts it (its user, its settings file) serves and completes the welcome flow
  compose  `docker-compose config` accepts deploy/compose.yaml

Prints the figures (sizes, cold start to /readyz, stop time) at the end. Real parts only:
PostgreSQL, maildev (SMTP), nisshi (Kafka protocol), the development OIDC provider.
"""

import gzip
import json
import os
import re
import secrets
import shutil
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

import yaml

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
BIN = os.path.join(ROOT, "target/x86_64-unknown-linux-musl/release/herald")
PG = os.environ.get("HERALD_PG_ADMIN_URL", "postgres://postgres@127.0.0.1:5432")
NODE_BIN = os.path.join(ROOT, "tools/node_modules/.bin")
FIGURES = {}
CLEANUP = []


def log(msg):
    print(f"\033[1;34m==>\033[0m artifacts: {msg}", file=sys.stderr, flush=True)


def check(cond, msg):
    if not cond:
        raise AssertionError(msg)


def free_port():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    return port


def run(args, check_rc=True, **kw):
    r = subprocess.run(args, capture_output=True, text=True, **kw)
    if check_rc and r.returncode != 0:
        raise AssertionError(f"{' '.join(args)} exited {r.returncode}:\n{r.stdout}\n{r.stderr}")
    return r


def psql(sql):
    run(["psql", f"{PG}/postgres", "-qAtc", sql])


def fresh_db(name):
    psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    psql(f'CREATE DATABASE "{name}"')
    CLEANUP.append(lambda: psql(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    return f"{PG}/{name}"


class NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *a, **k):
        return None


OPENER = urllib.request.build_opener(NoRedirect)


def http(url, headers=None, data=None, method=None, timeout=10):
    body = json.dumps(data).encode() if data is not None else None
    req = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    if body is not None:
        req.add_header("Content-Type", "application/json")
    try:
        with OPENER.open(req, timeout=timeout) as r:
            return r.status, r.headers, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read()


def wait_ready(base, started, seconds=60, proc=None):
    deadline = time.time() + seconds
    while time.time() < deadline:
        if proc is not None and proc.poll() is not None:
            raise AssertionError(f"herald exited {proc.returncode} before it was ready")
        try:
            if http(f"{base}/readyz", timeout=2)[0] == 200:
                return time.time() - started
        except OSError:
            pass
        time.sleep(0.05)
    raise AssertionError(f"{base}/readyz did not answer 200 within {seconds}s")


def background(args, log_name, **kw):
    out = open(os.path.join(ROOT, "target", log_name), "w")
    p = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, **kw)
    CLEANUP.append(lambda: (p.poll() is None) and (p.kill(), p.wait()))
    return p


def wait_port(port, seconds=30):
    deadline = time.time() + seconds
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return
        except OSError:
            time.sleep(0.1)
    raise AssertionError(f"nothing listens on 127.0.0.1:{port}")


class Maildev:
    def __init__(self):
        self.smtp, self.web = free_port(), free_port()
        background(
            [os.path.join(NODE_BIN, "maildev"), "--smtp", str(self.smtp), "--web", str(self.web),
             "--ip", "127.0.0.1", "--web-ip", "127.0.0.1"],
            "artifacts-maildev.log",
        )
        wait_port(self.web)
        wait_port(self.smtp)

    def wait_for(self, to, seconds=30):
        deadline = time.time() + seconds
        while time.time() < deadline:
            status, _, body = http(f"http://127.0.0.1:{self.web}/api/email")
            if status == 200:
                for mail in json.loads(body):
                    if any(t.get("address") == to for t in mail.get("envelope", {}).get("to", [])):
                        return mail
            time.sleep(0.2)
        raise AssertionError(f"no email to {to} arrived within {seconds}s")


def welcome_flow(base, key, maildev, tag):
    """The seed's flow: user.registered → the welcome email in the inbox."""
    to = f"ada-{tag}-{secrets.token_hex(3)}@example.test"
    status, _, body = http(
        f"{base}/api/v1/notifications",
        headers={"Authorization": f"Bearer {key}"},
        data={"event_type": "user.registered", "payload": {"user": {"name": "Ada", "email": to}}},
    )
    check(status == 202, f"POST /api/v1/notifications answered {status}: {body[:300]!r}")
    mail = maildev.wait_for(to)
    check(mail["subject"] == "Welcome to Herald, Ada!", f"the welcome email's subject: {mail['subject']!r}")


def api_key(cmd_prefix, env=None):
    r = run(cmd_prefix + ["api-key", "create", "--name", "artifacts", "--scope", "notifications:write",
                          "--scope", "notifications:read"], env=env)
    return r.stdout.strip().splitlines()[-1]


def is_static_elf(path):
    """True when the ELF has no PT_INTERP (no dynamic loader): a static executable."""
    with open(path, "rb") as f:
        head = f.read(64)
        check(head[:4] == b"\x7fELF" and head[4] == 2, f"{path} is a 64-bit ELF")
        phoff, = struct.unpack_from("<Q", head, 0x20)
        phentsize, phnum = struct.unpack_from("<HH", head, 0x36)
        f.seek(phoff)
        table = f.read(phentsize * phnum)
    return all(struct.unpack_from("<I", table, i * phentsize)[0] != 3 for i in range(phnum))


def console_assets(base):
    status, _, html = http(f"{base}/")
    check(status == 200, f"GET / answered {status}")
    html = html.decode()
    js = re.search(r'/pkg/herald-[0-9a-f]{16}\.js', html)
    wasm = re.search(r'/pkg/herald-[0-9a-f]{16}_bg\.wasm', html)
    css = re.search(r'/pkg/herald-[0-9a-f]{16}\.css', html)
    check(js and wasm and css, f"the page names the hashed bundle and stylesheet: {html[:600]}")
    for path in (js.group(0), wasm.group(0), css.group(0), "/favicon.svg"):
        status, h, raw = http(base + path)
        check(status == 200, f"GET {path} answered {status}")
        check(h.get("Content-Encoding") is None, f"{path} without Accept-Encoding is sent as is")
        check(h.get("ETag"), f"{path} has an ETag")
        status, _, body = http(base + path, headers={"If-None-Match": h["ETag"]})
        check(status == 304 and body == b"", f"{path} revalidates with 304 (got {status})")
        if not path.startswith("/pkg/herald-"):
            continue  # the favicon: a few hundred bytes, sent as they are
        check("immutable" in h.get("Cache-Control", ""), f"{path} is immutable: {h.get('Cache-Control')}")
        status, hb, br = http(base + path, headers={"Accept-Encoding": "gzip, deflate, br"})
        check(hb.get("Content-Encoding") == "br" and len(br) < len(raw), f"{path} goes out as brotli")
        status, hg, gz = http(base + path, headers={"Accept-Encoding": "gzip"})
        check(hg.get("Content-Encoding") == "gzip" and gzip.decompress(gz) == raw, f"{path} goes out as gzip")
        if path.endswith(".wasm"):
            check(h.get("Content-Type") == "application/wasm", "the module's type")
            FIGURES["console module"] = f"{len(raw)} B, {len(br)} B brotli, {len(gz)} B gzip"
    check(http(f"{base}/pkg/herald.js")[0] == 404, "unhashed names are not served")
    check(http(f"{base}/pkg/../Cargo.toml")[0] == 404, "nothing outside the assets")


def test_binary(maildev):
    log("the static binary, alone in an empty directory")
    check(is_static_elf(BIN), "the release binary is statically linked")
    FIGURES["binary size"] = f"{os.path.getsize(BIN) / 1e6:.1f} MB"
    work = tempfile.mkdtemp(prefix="herald-alone-")
    CLEANUP.append(lambda: shutil.rmtree(work, ignore_errors=True))
    exe = os.path.join(work, "herald")
    shutil.copy(BIN, exe)
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {
        "PATH": "/usr/bin:/bin",
        "DATABASE_URL": fresh_db("herald_art_binary"),
        "HERALD_SMTP_URL": f"smtp://127.0.0.1:{maildev.smtp}",
        "HERALD_SECRET_KEY": secrets.token_hex(32),
        "HERALD_LISTEN_ADDR": f"127.0.0.1:{port}",
        "HERALD_WEBHOOK_ALLOW_CIDRS": "127.0.0.1/32",
    }
    version = run([exe, "--version"], cwd=work, env=env).stdout.strip()
    check(re.fullmatch(r"herald \d+\.\d+\.\d+ \(commit [0-9a-f]{7,40}, x86_64-unknown-linux-musl\)", version),
          f"--version: {version!r}")

    ok = run([exe, "config", "check"], cwd=work, env=env)
    check("configuration OK" in ok.stdout and env["HERALD_SECRET_KEY"] not in ok.stdout, ok.stdout)
    check(re.search(r"HERALD_SECRET_KEY\s+environment\s+\(set, hidden\)", ok.stdout), ok.stdout)
    check(re.search(r"HERALD_WEBHOOK_TIMEOUT\s+default\s+15s", ok.stdout), ok.stdout)
    bad = dict(env, HERALD_LISTEN_ADDR="nowhere", HERALD_BUS="rabbit", HERALD_SMTP_URL="")
    r = run([exe, "config", "check"], check_rc=False, cwd=work, env=bad)
    check(r.returncode == 1, f"config check with problems exits 1, not {r.returncode}")
    for var in ("HERALD_LISTEN_ADDR", "HERALD_BUS", "HERALD_SMTP_URL"):
        check(f"problem: {var}:" in r.stdout, f"config check names {var}: {r.stdout}")

    doc = run([exe, "doctor"], cwd=work, env=env, check_rc=False)
    check(doc.returncode == 0 and re.search(r"ok\s+database", doc.stdout) and re.search(r"ok\s+smtp", doc.stdout),
          f"doctor: {doc.stdout}{doc.stderr}")
    doc = run([exe, "doctor"], cwd=work, env=dict(env, HERALD_SMTP_URL=f"smtp://127.0.0.1:{free_port()}"),
              check_rc=False)
    check(doc.returncode == 1 and re.search(r"FAIL\s+smtp", doc.stdout), f"doctor with no SMTP: {doc.stdout}")

    started = time.time()
    proc = subprocess.Popen([exe, "serve"], cwd=work, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(ROOT, "target/artifacts-binary.log"), "w"))
    CLEANUP.append(lambda: (proc.poll() is None) and (proc.kill(), proc.wait()))
    FIGURES["binary: cold start to /readyz (fresh database, migrations included)"] = \
        f"{wait_ready(base, started, proc=proc):.2f} s"
    console_assets(base)
    key = api_key_env(exe, work, env, "--scope", "endpoints:write")
    welcome_flow(base, key, maildev, "binary")
    auth = {"Authorization": f"Bearer {key}"}
    status, _, body = http(f"{base}/api/v1/endpoints", headers=auth,
                           data={"url": "http://127.0.0.1:9/hooks", "event_types": ["user.*"]})
    check(status == 201, f"an endpoint is registered: {status} {body[:200]!r}")
    endpoint = json.loads(body)
    proc.send_signal(signal.SIGTERM)
    check(proc.wait(timeout=60) == 0, f"herald exits 0 on SIGTERM, not {proc.returncode}")
    restore_drill(exe, work, env, endpoint, auth)


def restore_drill(exe, work, env, endpoint, auth):
    """docs/operations.md's drill: dump, restore elsewhere, verify, serve with the same key."""
    log("the backup and restore drill")
    dump = os.path.join(work, "herald.dump")
    run(["pg_dump", "-Fc", "-f", dump, env["DATABASE_URL"]])
    restored = fresh_db("herald_art_restored")
    run(["pg_restore", "--no-owner", "-d", restored, dump])
    env = dict(env, DATABASE_URL=restored)
    verify = run([exe, "audit", "verify"], cwd=work, env=env)
    check(verify.stdout.startswith("OK:"), f"the restored audit chain verifies: {verify.stdout}")
    other = run([exe, "audit", "verify"], cwd=work, env=dict(env, HERALD_SECRET_KEY=secrets.token_hex(32)),
                check_rc=False)
    check(other.returncode != 0, "without the same HERALD_SECRET_KEY the chain does not verify")
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env["HERALD_LISTEN_ADDR"] = f"127.0.0.1:{port}"
    proc = subprocess.Popen([exe, "serve"], cwd=work, env=env, stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(ROOT, "target/artifacts-restored.log"), "w"))
    CLEANUP.append(lambda: (proc.poll() is None) and (proc.kill(), proc.wait()))
    wait_ready(base, time.time(), proc=proc)
    status, _, body = http(f"{base}/api/v1/endpoints/{endpoint['id']}/secret", headers=auth)
    check(status == 200 and json.loads(body)["key"] == endpoint["secret"],
          f"the restored endpoint's signing secret reads back: {status}")
    proc.send_signal(signal.SIGTERM)
    check(proc.wait(timeout=60) == 0, "the restored herald exits 0 on SIGTERM")


def api_key_env(exe, cwd, env, *more):
    r = run([exe, "api-key", "create", "--name", "artifacts", "--scope", "notifications:write",
             "--scope", "notifications:read", *more], cwd=cwd, env=env)
    return r.stdout.strip().splitlines()[-1]


PODMAN = ["podman", "--runtime", "runc", "--cgroup-manager=cgroupfs"]


def podman_env():
    """Podman as it runs on these machines (docs in scripts/lib.sh's podman_cmd)."""
    conf = os.path.join(ROOT, "target/containers.conf")
    if not os.path.exists(conf):
        with open(conf, "w") as f:
            f.write("[containers]\ndefault_ulimits = []\n")
    return dict(os.environ, CONTAINERS_CONF=conf)


def podman(*args, check_rc=True):
    return run([*PODMAN, *args], check_rc=check_rc, env=podman_env())


def compose_service(name):
    env = dict(os.environ, HERALD_SECRET_KEY="0" * 64)
    out = run(["docker-compose", "-f", os.path.join(ROOT, "deploy/compose.yaml"), "config"], env=env).stdout
    return yaml.safe_load(out)["services"][name]


def test_image(maildev):
    log("the container image, run as deploy/compose.yaml runs Herald")
    version = run([BIN, "--version"]).stdout.split()[1]
    image = f"herald:{version}"
    svc = compose_service("api")
    check(svc["image"] == image, f"compose runs {svc['image']}, the build makes {image}")
    size = int(podman("image", "inspect", "--format", "{{.Size}}", image).stdout.strip())
    FIGURES["image size"] = f"{size / 1e6:.1f} MB"
    check(svc["healthcheck"]["test"] == ["CMD", "/usr/bin/herald", "healthcheck"], "compose's health check")

    port, broker, oidc = free_port(), free_port(), free_port()
    base = f"http://127.0.0.1:{port}"
    background([os.environ.get("NISSHI", "nisshi"), "broker", "--storage-engine", "memory://nisshi/",
                "--listener-url", f"tcp://127.0.0.1:{broker}", "--advertised-listener-url",
                f"tcp://127.0.0.1:{broker}", "--group-initial-rebalance-delay", "0s"], "artifacts-nisshi.log")
    background(["node", os.path.join(ROOT, "tools/oidc/provider.mjs")], "artifacts-oidc.log",
               env=dict(os.environ, OIDC_PORT=str(oidc), HERALD_PUBLIC_URL=base))
    wait_port(broker)
    wait_port(oidc)
    # Compose's environment, with its hosts replaced by this machine's services.
    env = dict(svc["environment"])
    env.update({
        "DATABASE_URL": fresh_db("herald_art_image"),
        "HERALD_SECRET_KEY": secrets.token_hex(32),
        "HERALD_SMTP_URL": f"smtp://127.0.0.1:{maildev.smtp}",
        "HERALD_KAFKA_BROKERS": f"127.0.0.1:{broker}",
        "HERALD_KAFKA_TOPIC_PREFIX": f"art{secrets.token_hex(3)}.",
        "HERALD_PUBLIC_URL": base,
        "HERALD_LISTEN_ADDR": f"127.0.0.1:{port}",
        "HERALD_OIDC_ISSUER": f"http://127.0.0.1:{oidc}",
        "HERALD_OIDC_CLIENT_SECRET": "herald-dev-secret",
    })
    check(env["HERALD_BUS"] == "kafka" and env["HERALD_LOG_FORMAT"] == "json", "compose's settings are used")
    flags = ["--network", "host", "--user", svc["user"]]
    check(svc.get("read_only") is True, "compose runs Herald read-only")
    flags.append("--read-only")
    for k, v in env.items():
        flags += ["-e", f"{k}={v}"]

    migrate = podman("run", "--rm", *flags, image, "migrate")
    check("migrations applied" in migrate.stdout, f"the init step: {migrate.stdout}")
    name = f"herald-art-{secrets.token_hex(3)}"
    CLEANUP.append(lambda: podman("rm", "-f", name, check_rc=False))
    started = time.time()
    podman("run", "-d", "--name", name, *flags, image, "serve")
    FIGURES["image: cold start to /readyz (Kafka bus, OIDC discovery)"] = f"{wait_ready(base, started):.2f} s"
    check(podman("healthcheck", "run", name, check_rc=False).returncode == 0, "the image's HEALTHCHECK passes")
    inspect = json.loads(podman("inspect", name).stdout)[0]
    check(inspect["HostConfig"]["ReadonlyRootfs"] is True, "the root filesystem is read-only")
    pid = inspect["State"]["Pid"]
    uid = run(["ps", "-o", "uid=", "-p", str(pid)]).stdout.strip()
    check(uid == svc["user"].split(":")[0] and uid != "0", f"herald runs as uid {uid}")

    key = api_key([*PODMAN, "run", "--rm", *flags, image], env=podman_env())
    welcome_flow(base, key, maildev, "image")
    check(http(f"{base}/")[0] == 303, "the console asks for login (the provider is configured)")

    stopped = time.time()
    podman("stop", "-t", "60", name)
    FIGURES["image: stop on SIGTERM"] = f"{time.time() - stopped:.2f} s (grace 60 s)"
    state = json.loads(podman("inspect", name).stdout)[0]["State"]
    check(state["ExitCode"] == 0, f"the container exits 0 on SIGTERM, not {state['ExitCode']}")
    logs = podman("logs", name)
    lines = [line for line in logs.stdout.splitlines() if line.strip()]
    check(lines, "the container logs to stdout")
    for line in lines:
        json.loads(line)  # every line is a JSON object
    check(not logs.stderr.strip(), f"nothing on stderr: {logs.stderr[:300]}")


def unit_settings(path):
    """The [Service] settings of a unit file (repeated keys as lists)."""
    settings, section = {}, None
    for line in open(path):
        line = line.strip()
        if line.startswith("["):
            section = line
        elif section == "[Service]" and "=" in line and not line.startswith("#"):
            k, v = line.split("=", 1)
            settings.setdefault(k, []).append(v)
    return settings


def test_deb(maildev):
    log("the Debian package, installed with apt-get and started as its unit starts it")
    debs = [f for f in os.listdir(os.path.join(ROOT, "target/dist")) if f.endswith("_amd64.deb")]
    check(len(debs) == 1, f"one package in target/dist: {debs}")
    deb = os.path.join(ROOT, "target/dist", debs[0])
    FIGURES["package size"] = f"{os.path.getsize(deb) / 1e6:.1f} MB"
    sudo = [] if os.geteuid() == 0 else ["sudo"]
    apt_env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    run(sudo + ["apt-get", "install", "-y", "--reinstall", deb], env=apt_env)
    CLEANUP.append(lambda: run(sudo + ["apt-get", "purge", "-y", "herald"], check_rc=False, env=apt_env))
    unit = "/lib/systemd/system/herald.service"
    r = run(["systemd-analyze", "verify", unit], check_rc=False)
    check(r.returncode == 0 and "herald" not in r.stderr, f"systemd-analyze verify: {r.stdout}{r.stderr}")
    conffiles = run(["dpkg-query", "-W", "-f=${Conffiles}", "herald"]).stdout
    check("/etc/herald/herald.toml" in conffiles, f"the settings file is a conffile: {conffiles}")
    st = os.stat("/etc/herald/herald.toml")
    check(oct(st.st_mode & 0o777) == "0o640", "the settings file is 0640")
    s = unit_settings(unit)
    for hardening in ("NoNewPrivileges", "ProtectSystem", "User"):
        check(hardening in s, f"the unit sets {hardening}")

    # The operator sets the three required settings in the packaged file.
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    with open("/etc/herald/herald.toml", "a") as f:
        f.write(f'\nDATABASE_URL = "{fresh_db("herald_art_deb")}"\nHERALD_SMTP_URL = "smtp://127.0.0.1:{maildev.smtp}"\n'
                f'HERALD_SECRET_KEY = "{secrets.token_hex(32)}"\nHERALD_LISTEN_ADDR = "127.0.0.1:{port}"\n')
    env = {"PATH": "/usr/bin:/bin"}
    for assignment in s.get("Environment", []):
        k, v = assignment.split("=", 1)
        env[k] = v
    user = s["User"][0]
    # As systemd execs it: the unit's user and environment, nothing in between (setpriv execs).
    as_unit = sudo + ["setpriv", f"--reuid={user}", f"--regid={user}", "--init-groups", "--",
                      "env", "-i", *[f"{k}={v}" for k, v in env.items()]]
    for pre in s.get("ExecStartPre", []):
        run(as_unit + pre.split())
    started = time.time()
    proc = subprocess.Popen(as_unit + s["ExecStart"][0].split(), stdout=subprocess.DEVNULL,
                            stderr=open(os.path.join(ROOT, "target/artifacts-deb.log"), "w"))
    CLEANUP.append(lambda: (proc.poll() is None) and (proc.kill(), proc.wait()))
    wait_ready(base, started, proc=proc)
    key = api_key(sudo + ["env", *[f"{k}={v}" for k, v in env.items()], "/usr/bin/herald"])
    welcome_flow(base, key, maildev, "deb")
    proc.send_signal(signal.SIGTERM)
    check(proc.wait(timeout=60) == 0, f"the unit's process exits 0 on SIGTERM, not {proc.returncode}")


def test_compose():
    log("deploy/compose.yaml")
    path = os.path.join(ROOT, "deploy/compose.yaml")
    r = run(["docker-compose", "-f", path, "config"], check_rc=False, env=dict(os.environ, HERALD_SECRET_KEY=""))
    check(r.returncode != 0 and "HERALD_SECRET_KEY" in r.stderr, "compose refuses to start without a secret key")
    services = {n: compose_service(n) for n in ("api", "relay", "email", "webhook", "migrate")}
    for n, svc in services.items():
        check(svc["read_only"] is True and svc["user"] == "65532:65532", f"{n} runs read-only, as non-root")
        if n != "migrate":
            check(svc["restart"] == "unless-stopped" and svc["healthcheck"]["test"], f"{n} restarts and is checked")
            check(svc["depends_on"]["migrate"]["condition"] == "service_completed_successfully", f"{n} waits for migrate")
    check(services["webhook"]["deploy"]["replicas"] == 2, "two webhook dispatchers")
    check(services["api"]["command"] == ["serve", "--roles", "api"], "the api role")
    for other in ("postgres", "kafka", "keycloak", "mailpit"):
        check(compose_service(other).get("healthcheck"), f"{other} has a health check")
    with open(os.path.join(ROOT, "deploy/keycloak/herald-realm.json")) as f:
        realm = json.load(f)
    check(any(c["clientId"] == "herald" for c in realm["clients"]), "the realm has Herald's client")


def main():
    which = sys.argv[1:] or ["compose", "binary", "image", "deb"]
    maildev = Maildev() if set(which) - {"compose"} else None
    try:
        for name in which:
            {"compose": lambda: test_compose(), "binary": lambda: test_binary(maildev),
             "image": lambda: test_image(maildev), "deb": lambda: test_deb(maildev)}[name]()
    finally:
        for f in reversed(CLEANUP):
            try:
                f()
            except Exception as e:  # noqa: BLE001 - cleanup goes on
                print(f"cleanup: {e}", file=sys.stderr)
    print("\nArtifact figures:")
    for k, v in FIGURES.items():
        print(f"  {k}: {v}")
    log("all artifact tests passed")


if __name__ == "__main__":
    main()
