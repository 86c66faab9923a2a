"""The proxies under test: gatehouse, nginx, HAProxy, Caddy and h2o, each with one worker (Caddy:
GOMAXPROCS=1) pinned to the proxy CPU, TLS 1.3, the same ECDSA P-256 chain, access logs off.
Caddy and h2o (Debian's, without stream/layer-4 modules) play the http role only. One config
per role:

  terminate    TLS terminated, plaintext relayed to the origin (L4, like gatehouse's tcp mode)
  passthrough  SNI read without terminating, TLS relayed to the origin's TLS port
  http         TLS terminated, HTTP reverse-proxied (L7, like gatehouse's http mode): pooled
               keep-alive upstream connections, X-Forwarded-For / -Proto set on each request
  h2           the same with h2 on both sides, as gRPC runs (gatehouse's `g` names): h2 from
               the client by ALPN, h2 with prior knowledge to the origin's h2c port

`resumption` switches session tickets and caches on or off (full vs resumed handshakes).

Two references, not peers, play the http role beside them: `floor-pingora` and `floor-hyper`
(benches/tools/src/http_floor.rs), the same TLS stack with no gateway work, to show what the
HTTP request path itself costs on Pingora and on hyper.
"""
import os
import shutil
import signal
import subprocess
import time

PROXY_PORT = 19443
ORIGIN_HTTP = 18080
ORIGIN_TLS = 18443
ORIGIN_H2C = 18081
TERM_HOST = "origin.bench.test"
PASS_HOST = "tlsorigins.bench.test"
HTTP_HOST = "web.bench.test"
H2_HOST = f"web-{ORIGIN_H2C}g.bench.test"  # gatehouse: app web, port 18081, h2 to the instance


ROLES = ("terminate", "passthrough", "http", "h2")


class Arm:
    """A proxy process; `pid` is the one whose CPU and memory are measured."""

    name = "?"
    roles = ROLES
    binary = None  # the program an optional arm needs on PATH

    @classmethod
    def available(cls, env):
        return cls.binary is None or shutil.which(cls.binary) is not None

    def __init__(self, env):
        self.env = env
        self.proc = None
        self.pid = None

    def stop(self):
        if self.proc is None:
            return
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
        self.proc.wait()
        self.proc = None
        self.pid = None
        time.sleep(0.2)

    config_file = "?"

    def start(self, role, resumption):
        """Writes this arm's config for `role` and starts it on the proxy CPU."""
        wait_free(PROXY_PORT)
        path = os.path.join(self.env.work, self.config_file)
        with open(path, "w") as f:
            f.write(self.config(role, resumption))
        self._spawn(self.argv(path), self.env.work)
        self.pid = self.measured_pid()

    def measured_pid(self):
        return self.proc.pid  # taskset execs in place

    def spawn_env(self):
        return None  # the harness's own

    def _spawn(self, argv, cwd):
        log = open(os.path.join(cwd, f"{self.name}.log"), "ab")
        self.proc = subprocess.Popen(
            ["taskset", "-c", self.env.cpu_proxy] + argv,
            cwd=cwd, stdout=log, stderr=log, start_new_session=True,
            env=self.spawn_env(),
        )
        wait_port(PROXY_PORT)


def wait_port(port, timeout=15):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing listens on {port}")


def wait_free(port, timeout=15):
    import socket
    deadline = time.time() + timeout
    while time.time() < deadline:
        s = socket.socket()
        try:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind(("127.0.0.1", port))
            return
        except OSError:
            time.sleep(0.05)
        finally:
            s.close()
    raise RuntimeError(f"port {port} still busy")


class Gatehouse(Arm):
    name = "gatehouse"

    def config(self, role, resumption):
        e = self.env
        return f"""
[proxy]
listen = ["127.0.0.1:{PROXY_PORT}"]
base_domains = ["bench.test"]
allow_local_instances = true
workers = 1
[proxy.limits]
# One load generator on loopback stands for many clients (as a balancer in front would).
unlimited_sources = ["127.0.0.0/8"]
[proxy.timeouts]
idle = "10m"
[proxy.custom_domains]
enabled = false

[[apps]]
id = "origin"
default_port = {ORIGIN_HTTP}
[[apps.instances]]
address = "127.0.0.1"

[[apps]]
id = "tlsorigin"
default_port = {ORIGIN_TLS}
[[apps.instances]]
address = "127.0.0.1"

[[apps]]
id = "web"
mode = "http"
default_port = {ORIGIN_HTTP}
ports = [{ORIGIN_HTTP}, {ORIGIN_H2C}]
[[apps.instances]]
address = "127.0.0.1"

[tls]
resumption = {str(resumption).lower()}
certificates = [{{ cert = "{e.work}/chain.pem", key = "{e.work}/leaf.key" }}]

[tee]
provider = "simulator"
"""

    config_file = "gatehouse.toml"

    def argv(self, path):
        return [self.env.gatehouse, "run", "--config", path]


class Nginx(Arm):
    name = "nginx"

    def config(self, role, resumption):
        e = self.env
        tickets = "on" if resumption else "off"
        cache = "shared:S:10m" if resumption else "off"
        tls = f"""ssl_certificate {e.work}/chain.pem;
        ssl_certificate_key {e.work}/leaf.key;
        ssl_protocols TLSv1.3;
        ssl_session_tickets {tickets};
        ssl_session_cache {cache};"""
        if role in ("http", "h2"):
            # h2: nginx's h2 upstream is grpc_pass
            h2 = role == "h2"
            port, listen = (ORIGIN_H2C, " http2") if h2 else (ORIGIN_HTTP, "")
            location = """grpc_pass grpc://origin;
            grpc_set_header X-Forwarded-For $remote_addr;
            grpc_set_header X-Forwarded-Proto https;""" if h2 else """proxy_pass http://origin;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $remote_addr;
            proxy_set_header X-Forwarded-Proto https;"""
            block = f"""
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    upstream origin {{
        server 127.0.0.1:{port};
        keepalive 64;
    }}
    server {{
        listen 127.0.0.1:{PROXY_PORT} ssl{listen};
        {tls}
        location / {{
            {location}
        }}
    }}
}}"""
        elif role == "terminate":
            server = f"""
    server {{
        listen 127.0.0.1:{PROXY_PORT} ssl;
        {tls}
        proxy_pass 127.0.0.1:{ORIGIN_HTTP};
    }}"""
        else:
            server = f"""
    map $ssl_preread_server_name $upstream {{
        {PASS_HOST} 127.0.0.1:{ORIGIN_TLS};
        default 127.0.0.1:{ORIGIN_TLS};
    }}
    server {{
        listen 127.0.0.1:{PROXY_PORT};
        ssl_preread on;
        proxy_pass $upstream;
    }}"""
        if role not in ("http", "h2"):
            block = f"""
stream {{
    proxy_timeout 600s;
{server}
}}"""
        return f"""
load_module /usr/lib/nginx/modules/ngx_stream_module.so;
daemon off;
master_process on;
worker_processes 1;
worker_cpu_affinity {1 << int(e.cpu_proxy):b};
worker_rlimit_nofile 20000;
pid {e.work}/nginx-proxy.pid;
error_log {e.work}/nginx-proxy.err error;
events {{ worker_connections 20000; }}
{block}
"""

    config_file = "nginx-proxy.conf"

    def argv(self, path):
        return ["nginx", "-c", path, "-p", self.env.work]

    def measured_pid(self):
        return worker_of(self.proc.pid)


class Haproxy(Arm):
    name = "haproxy"

    def config(self, role, resumption):
        e = self.env
        cache = "" if resumption else "    tune.ssl.cachesize 0\n"
        tickets = "" if resumption else " no-tls-tickets"
        mode = "http" if role in ("http", "h2") else "tcp"
        if role == "h2":
            front = f"""
frontend fe
    bind 127.0.0.1:{PROXY_PORT} ssl crt {e.work}/haproxy.pem ssl-min-ver TLSv1.3 alpn h2{tickets}
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    default_backend be
backend be
    http-reuse safe
    server origin 127.0.0.1:{ORIGIN_H2C} proto h2
"""
        elif role == "http":
            front = f"""
frontend fe
    bind 127.0.0.1:{PROXY_PORT} ssl crt {e.work}/haproxy.pem ssl-min-ver TLSv1.3{tickets}
    option forwardfor
    http-request set-header X-Forwarded-Proto https
    default_backend be
backend be
    http-reuse safe
    server origin 127.0.0.1:{ORIGIN_HTTP}
"""
        elif role == "terminate":
            front = f"""
frontend fe
    bind 127.0.0.1:{PROXY_PORT} ssl crt {e.work}/haproxy.pem ssl-min-ver TLSv1.3{tickets}
    default_backend be
backend be
    server origin 127.0.0.1:{ORIGIN_HTTP}
"""
        else:
            front = f"""
frontend fe
    bind 127.0.0.1:{PROXY_PORT}
    tcp-request inspect-delay 5s
    tcp-request content accept if {{ req.ssl_hello_type 1 }}
    use_backend be_tls if {{ req.ssl_sni -i {PASS_HOST} }}
    default_backend be_tls
backend be_tls
    server origin 127.0.0.1:{ORIGIN_TLS}
"""
        return f"""
global
    nbthread 1
    cpu-map 1/1 {e.cpu_proxy}
    maxconn 9400
{cache}
defaults
    mode {mode}
    timeout connect 5s
    timeout client 600s
    timeout server 600s
    timeout http-keep-alive 600s
{front}
"""

    config_file = "haproxy.cfg"

    def argv(self, path):
        return ["haproxy", "-db", "-f", path]


def worker_of(master, timeout=5):
    """nginx's single worker process (the master only supervises)."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        out = subprocess.run(["pgrep", "-P", str(master)], capture_output=True, text=True).stdout.split()
        # taskset execs nginx in place, so `master` is nginx's master
        if out:
            return int(out[0])
        time.sleep(0.02)
    raise RuntimeError("nginx worker not found")


class Origin:
    """nginx on the load CPU: plain HTTP and HTTPS with static bodies of each size."""

    def __init__(self, env):
        self.env = env
        self.proc = None

    def start(self):
        e = self.env
        conf = f"""
daemon off;
master_process off;
worker_processes 1;
worker_rlimit_nofile 20000;
pid {e.work}/origin.pid;
error_log {e.work}/origin.err error;
events {{ worker_connections 20000; }}
http {{
    access_log off;
    keepalive_requests 100000000;
    keepalive_timeout 600s;
    sendfile on;
    tcp_nopush on;
    server {{
        listen 127.0.0.1:{ORIGIN_HTTP} backlog=4096;
        listen 127.0.0.1:{ORIGIN_TLS} ssl backlog=4096;
        listen 127.0.0.1:{ORIGIN_H2C} http2 backlog=4096;
        ssl_certificate {e.work}/chain.pem;
        ssl_certificate_key {e.work}/leaf.key;
        ssl_protocols TLSv1.3;
        root {e.work}/www;
        location = /0 {{ return 200 ""; }}
    }}
}}
"""
        path = os.path.join(e.work, "origin.conf")
        with open(path, "w") as f:
            f.write(conf)
        log = open(os.path.join(e.work, "origin.log"), "ab")
        self.proc = subprocess.Popen(["taskset", "-c", e.cpu_load, "nginx", "-c", path, "-p", e.work],
                                     stdout=log, stderr=log, start_new_session=True)
        wait_port(ORIGIN_HTTP)
        wait_port(ORIGIN_TLS)
        wait_port(ORIGIN_H2C)

    def stop(self):
        if self.proc:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()


class Caddy(Arm):
    name = "caddy"
    roles = ("http", "h2")
    binary = "caddy"

    def config(self, role, resumption):
        e = self.env
        # Caddy sets X-Forwarded-For/-Proto/-Host on every proxied request by default.
        return f"""
{{
    admin off
    auto_https off
    storage file_system {e.work}/caddy-data
    servers {{
        protocols h1 h2
    }}
}}
https://{H2_HOST if role == "h2" else HTTP_HOST}:{PROXY_PORT} {{
    bind 127.0.0.1
    tls {e.work}/chain.pem {e.work}/leaf.key {{
        protocols tls1.3
    }}
    reverse_proxy {f"h2c://127.0.0.1:{ORIGIN_H2C}" if role == "h2" else f"127.0.0.1:{ORIGIN_HTTP}"} {{
        transport http {{
            keepalive 600s
            keepalive_idle_conns 64
            keepalive_idle_conns_per_host 64
        }}
    }}
}}
"""

    config_file = "Caddyfile"

    def spawn_env(self):
        w = self.env.work
        return dict(os.environ, GOMAXPROCS="1", HOME=w, XDG_DATA_HOME=w, XDG_CONFIG_HOME=w)

    def argv(self, path):
        return ["caddy", "run", "--adapter", "caddyfile", "--config", path]


class H2o(Arm):
    name = "h2o"
    roles = ("http",)
    binary = "h2o"

    def config(self, role, resumption):
        e = self.env
        # h2o emits X-Forwarded-For/-Proto by default (proxy.emit-x-forwarded-headers).
        return f"""
num-threads: 1
user: root
pid-file: {e.work}/h2o.pid
error-log: {e.work}/h2o.err
listen:
  host: 127.0.0.1
  port: {PROXY_PORT}
  ssl:
    certificate-file: {e.work}/chain.pem
    key-file: {e.work}/leaf.key
hosts:
  "{HTTP_HOST}:{PROXY_PORT}":
    paths:
      /:
        proxy.reverse.url: http://127.0.0.1:{ORIGIN_HTTP}/
        proxy.preserve-host: ON
        proxy.timeout.keepalive: 600000
"""

    config_file = "h2o.conf"

    def argv(self, path):
        return ["h2o", "-c", path]


class Floor(Arm):
    """benches/tools/src/http_floor.rs: TLS as gatehouse terminates it, then `engine` alone."""

    roles = ("http",)
    engine = "?"
    role = "http"

    @classmethod
    def available(cls, env):
        return os.path.exists(env.floor)

    def config(self, role, resumption):
        return f"# http_floor {self.engine}: no config file; see benches/tools/src/http_floor.rs\n"

    config_file = "floor.txt"

    def start(self, role, resumption):
        self.role = role
        return super().start(role, resumption)

    def argv(self, path):
        e = self.env
        engine, origin = ("hyper-h2", ORIGIN_H2C) if self.role == "h2" else (self.engine, ORIGIN_HTTP)
        return [e.floor, engine, f"127.0.0.1:{PROXY_PORT}", f"127.0.0.1:{origin}",
                f"{e.work}/chain.pem", f"{e.work}/leaf.key"]


class FloorPingora(Floor):
    name = "floor-pingora"
    engine = "pingora"


class FloorHyper(Floor):
    name = "floor-hyper"
    engine = "hyper"
    roles = ("http", "h2")  # h2: hyper's h2 server and client (`hyper-h2`)


ARMS = [Gatehouse, Nginx, Haproxy, Caddy, H2o, FloorPingora, FloorHyper]
PEERS = ("nginx", "haproxy", "caddy", "h2o")
REFERENCES = ("floor-pingora", "floor-hyper")
