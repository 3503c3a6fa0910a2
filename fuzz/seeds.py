#!/usr/bin/env python3
"""Writes fuzz/seeds/<target>/: small starting inputs for each fuzz target,
made from the repository's own fixtures (src/*/fixtures, src/update/testdata)
and from messages as docs/protocol.md describes them. Each seed carries the
target's option byte first (see the target's doc). Run from anywhere:
`python3 fuzz/seeds.py`; the output is committed, so this is needed only
when fixtures or input layouts change."""

import json
import os
import shutil
import struct

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
OUT = os.path.join(ROOT, "fuzz", "seeds")
MAX_SEED = 4096


def fixture(*parts):
    with open(os.path.join(ROOT, *parts), "rb") as f:
        return f.read()


def write(target, name, data):
    d = os.path.join(OUT, target)
    os.makedirs(d, exist_ok=True)
    with open(os.path.join(d, name), "wb") as f:
        f.write(data[:MAX_SEED])


def varint(v):
    out = bytearray()
    while True:
        b = v & 0x7F
        v >>= 7
        if v:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def zz(v):
    return (v << 1) ^ (v >> 63) if v >= 0 else ((-v) << 1) - 1


def frame(kind, tag, channel, seq, payload=b""):
    return struct.pack(">BBHIQ", kind, tag, 0, channel, seq) + payload


def mux(stream, payload):
    return struct.pack(">BxxxI", stream, len(payload)) + payload


def http_body(raw):
    """The body of a fixture response, chunked framing removed."""
    head, _, body = raw.partition(b"\r\n\r\n")
    if b"chunked" not in head.lower():
        return body
    out = b""
    while body:
        line, _, body = body.partition(b"\r\n")
        n = int(line.split(b";")[0], 16)
        if n == 0:
            break
        out += body[:n]
        body = body[n + 2:]
    return out


def main():
    shutil.rmtree(OUT, ignore_errors=True)
    docker = os.path.join("src", "docker", "fixtures")

    # frame: one of each kind.
    write("frame", "data", frame(1, 1, 0x40000001, 0, b"hello\n"))
    write("frame", "ack", frame(2, 0, 0x40000001, 6))
    write("frame", "credit", frame(3, 0, 0x80000001, 65536))
    write("frame", "end", frame(4, 0, 0x40000001, 6, b"exit 0"))
    write("frame", "metrics", frame(5, 0, 0, 0, b"\x05\x01\x01\x00\x01\x00"))

    # control: messages of docs/protocol.md.
    msgs = [
        {"type": "hello", "id": 1, "protocol": [1], "runner_version": "0.1.0", "arch": "x86_64",
         "os": "linux", "hostname": "h1", "heartbeat_ms": 15000, "capabilities": ["terminal.host"],
         "open_channels": [1073741825], "metrics_interval_ms": 10000},
        {"type": "welcome", "id": 1, "protocol": 1, "runner_id": "r_1", "server_version": "0.1.0",
         "acks": [{"channel": 1073741825, "seq": 10}], "metrics_ts": 1700000000000},
        {"type": "ping", "id": 2, "sent_ms": 1},
        {"type": "pong", "id": 2, "sent_ms": 1, "now_ms": 2, "version": "0.1.0"},
        {"type": "error", "id": 3, "code": "bad_request", "message": "no"},
        {"type": "metrics_schema", "id": 0, "schema": {"id": 1, "series": [
            {"name": "cpu.busy", "unit": "percent", "scale": 0.01},
            {"name": "mem.used", "unit": "bytes", "scale": 1024.0}]}},
        {"type": "metrics_ack", "id": 0, "ts_ms": 1700000000000},
        {"type": "docker_request", "id": 4, "op": "list", "filters": {"label": ["a=b"]}},
        {"type": "docker_response", "id": 4, "status": 200, "body": [{"Id": "x", "n": 1.5e3}]},
        {"type": "log_open", "id": 5, "channel": 7, "container": "web", "follow": True,
         "since_ns": 1, "skip": 2, "keep": True, "window": 65536},
        {"type": "log_opened", "id": 5, "channel": 7, "container_id": "abc", "name": "web", "tty": False},
        {"type": "job_start", "id": 6, "job_id": "j1", "channel": 9, "program": "sh",
         "args": ["-c", "echo hi"], "env": [["A", "1"]], "secrets": [["S", "x"]], "timeout_s": 60,
         "deploy": {"app": "web", "image": "web:1", "container": "web",
                    "ports": [{"host": 8080, "container": 80}], "env_file": "/app/.env",
                    "health": {"path": "/"}}},
        {"type": "job_result", "id": 7, "job_id": "j1", "channel": 9, "status": "exited",
         "exit_code": 0, "finished_ms": 2, "output_bytes": 3},
        {"type": "update", "id": 8, "version": "0.2.0", "binary": "/releases/0.2.0/tether-x86_64",
         "signature": "/releases/0.2.0/tether-x86_64.minisig"},
        {"type": "term_open", "id": 9, "channel": 2147483649, "cols": 80, "rows": 24,
         "container": "web", "command": ["sh"]},
        {"type": "term_resize", "id": 10, "channel": 2147483649, "cols": 100, "rows": 30},
        {"type": "container_event", "id": 0, "time_nano": 1, "action": "start", "container_id": "abc",
         "attributes": {"name": "web"}},
        {"type": "fingerprint", "id": 0, "ts_ms": 1, "changes": [
            {"path": "kernel", "old": "6.1.0", "new": "6.1.2"}]},
        {"type": "something_newer", "id": 11},
    ]
    for m in msgs:
        write("control", m["type"], json.dumps(m).encode())

    # metrics_wire: [series count] [schema id] batch of a key and two deltas.
    key = b"\x01" + varint(1) + varint(1700000000000) + varint(2) + varint(zz(1234) + 1) + b"\x00"
    d1 = b"\x02" + varint(1) + varint(zz(10000)) + b"\x03" + varint(zz(5) + 1) + varint(zz(77) + 1)
    d2 = b"\x02" + varint(1) + varint(zz(10000)) + b"\x01" + b"\x00"
    batch = b"".join(varint(len(r)) + r for r in (key, d1, d2))
    write("metrics_wire", "key_and_deltas", bytes([2, 1]) + batch)

    # metrics_roundtrip: samples [flags] [ts] [n] n x ([kind] [value]).
    def sample(flags, ts, values):
        out = bytes([flags]) + struct.pack("<Q", ts) + bytes([len(values)])
        for v in values:
            out += b"\0" + bytes(8) if v is None else b"\1" + struct.pack("<q", v)
        return out
    t0 = 1700000000000
    write("metrics_roundtrip", "ticks",
          sample(0, t0, [5, None, 7]) + sample(0, t0 + 10000, [6, 1, 7])
          + sample(1, t0 + 20000, [6, 1]) + sample(2, t0 + 15000, [-(1 << 63), (1 << 63) - 1]))

    # docker_http: [expect | cut << 2] response.
    for name in sorted(os.listdir(os.path.join(ROOT, docker))):
        if not name.endswith(".http"):
            continue
        raw = fixture(docker, name)
        if len(raw) > MAX_SEED:
            continue
        expect = 2 if name.startswith("exec_start") else 1 if name.startswith("ping_head") else 0
        write("docker_http", name, bytes([expect]) + raw)
        if name in ("keepalive_two.http", "chunked_trailers.http", "logs_follow_mux.http",
                    "exec_start_101.http", "continue_100.http"):
            write("docker_http", name + ".cut", bytes([expect | 3 << 2]) + raw)

    # docker_request: [builder] id \0 value.
    for which in range(12):
        write("docker_request", "builder%02d" % which, bytes([which]) + b"web_1\0SIGTERM")
    write("docker_request", "dots", b"\x00../images\0x")
    write("docker_request", "archive", b"\x08abc123\0/app")

    # log_time: Docker's and the API's time forms.
    for i, t in enumerate([b"2026-11-28T13:13:49.544427973Z", b"2026-11-28T14:00:00.25+02:00",
                           b"2026-11-28 12:00:00.123456z", b"1970-01-01T00:00:00Z", b"15m",
                           b"1795867200000", b"2024-02-29T23:59:60-00:30"]):
        write("log_time", "t%d" % i, t)

    # selector: label selectors and cron expressions (one parser each).
    for i, t in enumerate([b"env=prod,region in (eu,us),!canary", b"tier notin (a, b),x!=y,z",
                           b"role=db", b"0 3 * * *", b"*/15 9-17 * jan-mar mon-fri",
                           b"0 0 29 2 *"]):
        write("selector", "s%d" % i, t)

    # docker_stream and log_assembler: log bodies (mux and tty).
    mux_body = http_body(fixture(docker, "logs_follow_mux.http"))
    tty_body = http_body(fixture(docker, "logs_follow_tty.http"))
    events = http_body(fixture(docker, "events_engine29.http"))
    write("docker_stream", "mux", b"\x00" + mux_body)
    write("docker_stream", "tty", b"\x01" + tty_body)
    write("docker_stream", "events", b"\x01" + events)
    write("docker_stream", "systemerr", b"\x06" + mux(3, b"log file gone") + mux(1, b"x\n"))
    cursor = struct.pack("<qI", 1795871629, 544427973) + b"\x01"
    write("log_assembler", "mux", b"\x00" + cursor + mux_body)
    write("log_assembler", "mux_resume", b"\x02" + cursor + mux_body)
    write("log_assembler", "tty", b"\x01" + cursor + tty_body)
    write("log_assembler", "tty_resume_cut", b"\x0b" + cursor + tty_body)

    # proc: [parser] text, from two hosts' /proc.
    parsers = {"diskstats": 0, "loadavg": 1, "meminfo": 2, "mounts": 3, "net/dev": 4,
               "net/netstat": 5, "net/snmp6": 6, "stat": 7, "net/tcp": 8, "uptime": 9}
    for host in ("x86-6.1", "openwrt-mips-5.10", "centos5-2.6.18"):
        for rel, which in parsers.items():
            path = os.path.join(ROOT, "src", "metrics", "fixtures", "hosts", host, rel)
            if os.path.exists(path):
                with open(path, "rb") as f:
                    write("proc", host + "-" + rel.replace("/", "-"), bytes([which]) + f.read())
    cg = os.path.join("src", "metrics", "fixtures", "containers", "t0", "cgroup", "docker",
                      "aaaa000000000000000000000000000000000000000000000000000000000001")
    write("proc", "cgroup-cpu.stat", b"\x0a" + fixture(cg, "cpu.stat"))
    write("proc", "cgroup-procs", b"\x0a" + fixture(cg, "cgroup.procs"))
    write("proc", "tcp-cut", bytes([8 + 13 * 5]) + fixture("src", "metrics", "fixtures", "hosts",
                                                          "x86-6.1", "net", "tcp"))
    nl = struct.pack("=IHHII", 16 + 72, 18, 2, 1, 0) + bytes([2, 10]) + bytes(70)
    done = struct.pack("=IHHII", 20, 3, 2, 1, 0) + bytes(4)
    write("proc", "sock_diag", b"\x0b" + nl + done)
    write("proc", "release", b"\x0c" + b"5.15.0-91-generic")

    # fingerprint: [which] text.
    fp = os.path.join("src", "fingerprint", "fixtures")
    for n in ("x86-kvm", "rpi3-armv7", "mt7621-mips"):
        write("fingerprint", "cpuinfo-" + n, b"\x00" + fixture(fp, "cpuinfo", n))
    for n in ("debian12", "openwrt"):
        write("fingerprint", "os-release-" + n, b"\x01" + fixture(fp, "os-release", n))
    write("fingerprint", "tcp-le", b"\x02" + fixture(fp, "net", "le", "tcp"))
    write("fingerprint", "udp6-le", bytes([2 | 8]) + fixture(fp, "net", "le", "udp6"))
    write("fingerprint", "tcp-be", bytes([2 | 16]) + fixture(fp, "net", "be", "tcp"))
    write("fingerprint", "iptables", b"\x03" + fixture(fp, "firewall", "iptables-save-a") + b"\0"
          + fixture(fp, "firewall", "ip6tables-save"))
    write("fingerprint", "nft", b"\x04" + fixture(fp, "firewall", "nft-a.json"))
    write("fingerprint", "virt", b"\x05container=podman\0\xff0::/\xffQEMU\xffStandard PC\xff6.1.0")
    base = {"hostname": "h1", "os": {"id": "debian", "version_id": "12", "pretty_name": "Debian 12"},
            "kernel": "6.1.0", "kernel_version": "#1 SMP", "arch": "x86_64", "cpu_model": "EPYC",
            "board": None, "cpu_count": 2, "mem_total": 4096, "boot_time": 1700000000,
            "virtualization": "kvm", "container": None,
            "listening": [{"proto": "tcp", "addr": "0.0.0.0", "port": 22, "process": "sshd"}],
            "firewall": {"source": "iptables", "rules": ["ip4 filter: -A INPUT -j ACCEPT", "b", "c"]},
            "docker_version": "24.0", "runner_version": "0.1.0"}
    new = json.loads(json.dumps(base))
    new["kernel"] = "6.1.2"
    new["listening"].append({"proto": "udp", "addr": "::", "port": 546, "process": None})
    new["firewall"]["rules"] = ["b", "x", "c", "d"]
    write("fingerprint", "pair", b"\x06" + json.dumps([base, new]).encode())
    report = {"ts_ms": 1, "changes": [
        {"path": "kernel", "old": "6.1.0", "new": "6.1.2"},
        {"path": "listening", "new": {"proto": "udp", "addr": "::", "port": 546, "process": None}},
        {"path": "firewall.rules", "at": 0, "old": "ip4 filter: -A INPUT -j ACCEPT"}]}
    write("fingerprint", "report", b"\x07" + json.dumps([base, report]).encode())

    # http_response: the runner's HTTPS answers (enroll, downloads).
    write("http_response", "enroll", b"\x00HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
          b"Content-Length: 44\r\n\r\n{\"runner_id\":\"r_1\",\"credential\":\"tenc_abc\"}")
    write("http_response", "error", b"\x02HTTP/1.1 401 Unauthorized\r\nContent-Length: 63\r\n\r\n"
          b"{\"error\":{\"code\":\"invalid_token\",\"message\":\"unknown token\"}}\n")
    write("http_response", "chunked", b"\x06" + fixture(docker, "chunked_trailers.http"))
    write("http_response", "continue", b"\x00" + fixture(docker, "continue_100.http"))
    write("http_response", "until_close", b"\x08" + fixture(docker, "until_close.http"))
    write("http_response", "head", b"\x01" + fixture(docker, "ping_head.http"))

    # proxy_response: CONNECT answers (even) and URLs (odd).
    write("proxy_response", "established", b"\x00HTTP/1.1 200 Connection established\r\n\r\n\x16\x03\x01")
    write("proxy_response", "established_cut", b"\x0aHTTP/1.0 200 OK\r\nProxy-Agent: squid\r\n\r\n")
    write("proxy_response", "auth", b"\x00HTTP/1.1 407 Proxy Authentication Required\r\n"
          b"Proxy-Authenticate: Basic realm=\"p\"\r\n\r\n")
    write("proxy_response", "refused", b"\x04HTTP/1.1 403 Forbidden\r\nContent-Length: 0\r\n\r\n")
    for i, u in enumerate(["https://tether.example.com", "http://user:p%40ss@proxy:3128",
                           "wss://[::1]:8443/v1/runner/connect?x=1", "https://10.0.0.1:443/"]):
        write("proxy_response", "url%d" % i, b"\x01" + u.encode())

    # tar_path: .dockerignore + paths (even), name \0 contents (odd).
    write("tar_path", "ignore", b"\x00# comment\nnode_modules\n!node_modules/keep\n**/*.log\n/tmp/\n"
          b"a?c\n\\*x\n\0node_modules/a/b\nnode_modules/keep\nsrc/x.log\nabc\n*x")
    write("tar_path", "env_file", b"\x01.env\0A=1\nB=two\n")
    write("tar_path", "long_name", b"\x01" + b"d/" * 70 + b"file.txt\0x")

    # update: signature \0 binary, keys, comment, versions, record \0 offer.
    sig = fixture("src", "update", "testdata", "hello.minisig")
    pub = fixture("src", "update", "testdata", "k.pub")
    write("update", "signature", b"\x00" + sig + b"\0hello")
    write("update", "keys", b"\x01" + pub + fixture("src", "update", "testdata", "other.pub"))
    write("update", "comment", b"\x02tether-release version=0.2.0-rc1 arch=x86_64 x=y")
    write("update", "versions", b"\x030.2.0\n0.2.0-rc1\n1.0+build")
    record = {"pending": None, "failed": [{"version": "0.3.0", "reason": "died", "at_ms": 1}],
              "reports": [], "rejected": [{"version": "0.4.0", "reason": "bad", "at_ms": 1}]}
    write("update", "record", b"\x04" + json.dumps(record).encode() + b"\x000.3.0")


if __name__ == "__main__":
    main()
