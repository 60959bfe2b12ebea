"""A real mosquitto on loopback, and a paho subscriber that records what a client would receive."""

from __future__ import annotations

import base64
import contextlib
import getpass
import glob
import hashlib
import json
import os
import shutil
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

MOSQUITTO = shutil.which("mosquitto") or "/usr/sbin/mosquitto"
MOSQUITTO_PASSWD = shutil.which("mosquitto_passwd") or "/usr/bin/mosquitto_passwd"
DYNAMIC_SECURITY = next(iter(glob.glob("/usr/lib/*/mosquitto_dynamic_security.so")), "mosquitto_dynamic_security.so")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_until_listening(process: subprocess.Popen, port: int, log: Path, name: str, timeout: float = 10.0) -> None:
    """Until ``process`` accepts connections on 127.0.0.1:``port``; a RuntimeError with its log if it exits first."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{name} exited: {log.read_text()}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"{name} did not start listening")


class Broker:
    """``mosquitto`` on 127.0.0.1:``port``; ``stop()`` and ``start()`` again keep the same port.

    With ``users`` ({name: password}) anonymous clients are refused and a password file is used; with
    ``client_ids`` ({name: client id}) too, mosquitto's dynamic security plugin instead, which lets each of those
    users in with that client id only (another is refused "not authorised").
    With ``tls`` the listener speaks TLS only. Persistence is off unless ``persistent``: then retained messages and the sessions of clients with
    ``clean_session=False`` (and the QoS 1 messages queued for them) survive ``stop()``/``start()``.
    """

    def __init__(self, workdir: Path, users: dict[str, str] | None = None, port: int | None = None,
                 persistent: bool = False, tls: tuple[Path, Path, Path] | None = None,
                 client_ids: dict[str, str] | None = None):
        self.workdir = Path(workdir)
        self.workdir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.host = "127.0.0.1"
        self.process: subprocess.Popen | None = None
        # run as whoever runs the tests: as root, mosquitto would switch to a user that cannot read tmp_path
        lines = [f"listener {self.port} 127.0.0.1", f"user {getpass.getuser()}", "log_dest stderr", "log_type error", "log_type warning"]
        if tls is not None:  # (CA certificate, server certificate, server key)
            lines += [f"cafile {tls[0]}", f"certfile {tls[1]}", f"keyfile {tls[2]}"]
        if persistent:
            lines += ["persistence true", f"persistence_location {self.workdir}/"]
        else:
            lines.append("persistence false")
        if users and client_ids:
            security = self.workdir / "dynamic-security.json"
            security.write_text(json.dumps(_dynamic_security(users, client_ids)))
            lines += ["allow_anonymous false", f"plugin {DYNAMIC_SECURITY}", f"plugin_opt_config_file {security}"]
        elif users:
            password_file = self.workdir / "passwords"
            password_file.touch(mode=0o600)
            for name, password in users.items():
                subprocess.run([MOSQUITTO_PASSWD, "-b", str(password_file), name, password], check=True,
                               capture_output=True)
            lines += ["allow_anonymous false", f"password_file {password_file}"]
        else:
            lines.append("allow_anonymous true")
        self.config = self.workdir / "mosquitto.conf"
        self.config.write_text("\n".join(lines) + "\n")

    def start(self, timeout: float = 10.0) -> Broker:
        with open(self.workdir / "mosquitto.log", "ab") as log:
            self.process = subprocess.Popen([MOSQUITTO, "-c", str(self.config)], stdout=subprocess.DEVNULL, stderr=log)
        wait_until_listening(self.process, self.port, self.workdir / "mosquitto.log", "mosquitto", timeout)
        return self

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
        self.process = None

    def __enter__(self) -> Broker:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


def _dynamic_security(users: dict[str, str], client_ids: dict[str, str]) -> dict:
    """The dynamic security plugin's file: each user with its password (PBKDF2-SHA512, as mosquitto_ctrl writes it),
    bound to its client id where one is given, and every topic open to all."""
    clients = []
    for name, password in users.items():
        salt = os.urandom(12)
        digest = hashlib.pbkdf2_hmac("sha512", password.encode(), salt, 101, 64)
        client = {"username": name, "password": base64.b64encode(digest).decode(),
                  "salt": base64.b64encode(salt).decode(), "iterations": 101, "roles": []}
        if name in client_ids:
            client["clientid"] = client_ids[name]
        clients.append(client)
    everything = dict.fromkeys(("publishClientSend", "publishClientReceive", "subscribe", "unsubscribe"), True)
    return {"clients": clients, "groups": [], "roles": [], "defaultACLAccess": everything}


class Subscriber:
    """A separate paho client recording every message on ``topics`` (all by default); reconnects by itself."""

    def __init__(self, broker: Broker, topics=("#",), username=None, password=None, client_id=None):
        import paho.mqtt.client as paho
        from paho.mqtt.enums import CallbackAPIVersion

        self.messages: list = []
        self._changed = threading.Condition()
        self._subscribed = threading.Event()
        # a fixed client_id keeps a persistent session (queued QoS 1 messages) across broker restarts
        self.client = paho.Client(CallbackAPIVersion.VERSION2, client_id=client_id or f"test-subscriber-{free_port()}",
                                  clean_session=client_id is None)
        self.client.reconnect_delay_set(0.1, 0.5)
        if username:
            self.client.username_pw_set(username, password)
        self.client.on_connect = lambda c, u, f, rc, p=None: c.subscribe([(t, 1) for t in topics])
        self.client.on_subscribe = lambda *args: self._subscribed.set()
        self.client.on_message = self._on_message
        self.client.connect(broker.host, broker.port)
        self.client.loop_start()
        assert self._subscribed.wait(5), "subscriber did not get its SUBACK"

    def _on_message(self, client, userdata, message) -> None:
        with self._changed:
            self.messages.append(message)
            self._changed.notify_all()

    def on(self, topic: str) -> list:
        with self._changed:
            return [m for m in self.messages if m.topic == topic]

    def payloads(self, topic: str) -> list[str]:
        return [m.payload.decode() for m in self.on(topic)]

    def json(self, topic: str) -> list[dict]:
        return [json.loads(m.payload) for m in self.on(topic) if m.payload]

    def wait_for(self, topic: str, predicate=lambda message: True, timeout: float = 10.0, count: int = 1):
        """The first ``count`` messages on ``topic`` matching ``predicate``; AssertionError on timeout."""
        deadline = time.monotonic() + timeout
        with self._changed:
            while True:
                found = [m for m in self.messages if m.topic == topic and predicate(m)]
                if len(found) >= count:
                    return found[:count] if count > 1 else found[0]
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    seen = [(m.topic, m.payload[:80]) for m in self.messages]
                    raise AssertionError(f"no {count} message(s) on {topic} within {timeout} s; seen: {seen}")
                self._changed.wait(remaining)

    def publish(self, topic: str, payload: str, retain: bool = False) -> None:
        self.client.publish(topic, payload, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()

    def __enter__(self) -> Subscriber:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def make_certificates(folder: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A throw-away CA and a server certificate for ``host`` signed by it: (ca.crt, server.crt, server.key)."""
    folder.mkdir(parents=True, exist_ok=True)
    ca_key, ca, key, csr, cert = (folder / n for n in ("ca.key", "ca.crt", "server.key", "server.csr", "server.crt"))

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-days", "2",
            "-subj", "/CN=cryedge test CA", "-keyout", str(ca_key), "-out", str(ca))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes", "-subj", f"/CN={host}",
            "-keyout", str(key), "-out", str(csr))
    extensions = folder / "san.ext"
    extensions.write_text(f"subjectAltName=IP:{host}\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key), "-CAcreateserial", "-days", "2",
            "-extfile", str(extensions), "-out", str(cert))
    return ca, cert, key


def _mqtt_packet(kind: int, body: bytes) -> bytes:
    length, encoded = len(body), bytearray()
    while True:  # MQTT's variable-length "remaining length"
        length, digit = divmod(length, 128)
        encoded.append(digit | (0x80 if length else 0))
        if not length:
            return bytes([kind]) + bytes(encoded) + body


def _mqtt_string(text: str) -> bytes:
    data = text.encode()
    return len(data).to_bytes(2, "big") + data


def flood(broker: Broker, topic: str, payload: str, count: int) -> None:
    """``count`` QoS 0 messages on ``topic`` as fast as one connection takes them; returns once the broker has
    routed them all (its answer to a PINGREQ sent after them). An MQTT 3.1.1 client in a few bytes: paho would
    take seconds to send what an adversary's loop sends in milliseconds.
    """
    connect = _mqtt_packet(0x10, _mqtt_string("MQTT") + bytes([4, 0x02, 0, 60]) + _mqtt_string(f"flood-{free_port()}"))
    publish = _mqtt_packet(0x30, _mqtt_string(topic) + payload.encode())
    with socket.create_connection((broker.host, broker.port), timeout=30) as sock:
        sock.sendall(connect)
        assert sock.recv(4)[:1] == b"\x20", "no CONNACK"
        sock.sendall(publish * count + b"\xc0\x00")  # the messages, then PINGREQ
        answer = b""
        while not answer.endswith(b"\xd0\x00"):  # PINGRESP
            chunk = sock.recv(64)
            assert chunk, "the broker closed the flood connection"
            answer += chunk
        sock.sendall(b"\xe0\x00")  # DISCONNECT


class BlackHole:
    """A broker host that never answers, on 127.0.0.1:``port``, as a host that is down or firewalled looks.

    With ``syn`` the TCP handshake itself gets no answer: the listener's accept queue is full and never read, so
    Linux drops every further SYN (a connect times out). Without, TCP is accepted and no CONNACK ever comes; the
    connections are held until ``close()``. ``stop_listening()`` frees the port for a real broker while they are
    still held (the sockets allow the address to be reused), so that the client meets the broker only when
    ``close()`` drops them and it reconnects.
    """

    def __init__(self, port: int, syn: bool = False):
        self.port = port
        self.accepted: list[socket.socket] = []
        self._fillers: list[socket.socket] = []
        self._stop = threading.Event()
        self._listener = socket.socket()
        self._listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self._listener.bind(("127.0.0.1", port))
        self._thread: threading.Thread | None = None
        if syn:
            self._listener.listen(0)
            for _ in range(3):  # fill the accept queue (backlog 0 holds one) and its SYN queue's overflow
                filler = socket.socket()
                filler.setblocking(False)
                filler.connect_ex(("127.0.0.1", port))
                self._fillers.append(filler)
            time.sleep(0.2)  # their handshakes are done: the next SYN is dropped
        else:
            self._listener.listen(16)
            self._listener.settimeout(0.05)
            self._thread = threading.Thread(target=self._accept, name="black-hole", daemon=True)
            self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                connection, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # the listener was closed
                return
            self.accepted.append(connection)

    def stop_listening(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
            self._thread = None
        self._listener.close()

    def close(self) -> None:
        self.stop_listening()
        for sock in self.accepted + self._fillers:
            sock.close()
        self.accepted.clear()
        self._fillers.clear()

    def __enter__(self) -> BlackHole:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def relay(source: socket.socket, sink: socket.socket) -> None:
    """What ``source`` sends, passed on to ``sink`` as it comes, until ``source`` ends or either fails."""
    try:
        while data := source.recv(65536):
            sink.sendall(data)
    except OSError:
        pass


class ResettingRelay:
    """A TCP relay on 127.0.0.1:``port`` to ``broker``, whose ``reset()`` drops every client connection with a TCP
    reset (as a broker host that reboots, or a NAT or firewall that forgets the connection, does): the client's next
    read fails with "Connection reset by peer". New connections are relayed as before."""

    def __init__(self, broker: Broker, port: int | None = None, reset_at_once: bool = False):
        self.host, self.port, self._broker = "127.0.0.1", port or free_port(), broker
        self.reset_at_once = reset_at_once  # every new connection reset as it comes, before the broker's answer
        self._pairs: list[tuple[socket.socket, socket.socket]] = []
        self._pumps: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server((self.host, self.port))
        self._listener.settimeout(0.05)
        self._thread = threading.Thread(target=self._accept, name="relay", daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            client.settimeout(None)
            upstream = socket.create_connection((self._broker.host, self._broker.port))
            with self._lock:
                self._pairs.append((client, upstream))
            if self.reset_at_once:
                time.sleep(0.05)  # the client's CONNECT is in
                self.reset()
                continue
            for source, sink in ((client, upstream), (upstream, client)):
                pump = threading.Thread(target=relay, args=(source, sink), name="relay-pump", daemon=True)
                pump.start()
                self._pumps.append(pump)

    def reset(self) -> int:
        """Reset every relayed connection on the client's side (SO_LINGER 0); how many there were."""
        with self._lock:
            pairs, self._pairs = self._pairs, []
        for client, upstream in pairs:
            client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            # a close alone waits for the pump blocked in recv() on it (and sends nothing until then): woken first
            for sock in (client, upstream):
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RD if sock is client else socket.SHUT_RDWR)
                sock.close()
        return len(pairs)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self._listener.close()
        self.reset()
        for pump in self._pumps:
            pump.join(5)

    def __enter__(self) -> ResettingRelay:
        return self

    def __exit__(self, *exc) -> None:
        self.close()


class SlowLink:
    """A link to ``broker`` on 127.0.0.1:``port`` that passes ``rate`` bytes a second towards it, shared by every
    connection through it; the broker's answers come back at full speed.

    The connections take turns, a ``chunk`` at a time, as a fair queue (fq_codel) shares a
    slow uplink: what one connection has waiting does not hold up the bytes of another, but each byte of either
    takes its share of the link. Within one connection the bytes keep their order, as TCP keeps them.
    """

    def __init__(self, broker: Broker, rate: float, chunk: int = 512, port: int | None = None):
        self.host, self.port, self.rate, self.chunk = "127.0.0.1", port or free_port(), rate, chunk
        self._broker = broker
        self._towards: dict[socket.socket, socket.socket] = {}  # client -> its upstream, for the link's pump
        self._threads: list[threading.Thread] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._listener = socket.create_server((self.host, self.port))
        self._listener.settimeout(0.05)
        for target in (self._accept, self._pump_towards):
            self._start(target)

    def _start(self, target, *args) -> None:
        thread = threading.Thread(target=target, args=args, name="slow-link", daemon=True)
        thread.start()
        self._threads.append(thread)

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                client, _ = self._listener.accept()
            except TimeoutError:
                continue
            except OSError:  # closed
                return
            upstream = socket.create_connection((self._broker.host, self._broker.port))
            with self._lock:
                self._towards[client] = upstream
            self._start(self._pump_back, upstream, client)

    def _drop(self, client: socket.socket) -> None:
        with self._lock:
            upstream = self._towards.pop(client, None)
        for sock in (client, upstream):
            if sock is not None:
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()

    def _pump_towards(self) -> None:
        import select

        while not self._stop.is_set():
            with self._lock:
                clients = list(self._towards)
            if not clients:
                time.sleep(0.02)
                continue
            try:
                ready, _, _ = select.select(clients, [], [], 0.05)
            except (OSError, ValueError):  # one was closed under us
                continue
            for client in ready:  # one chunk each, in turn
                try:
                    data = client.recv(self.chunk)
                    if data:
                        self._towards[client].sendall(data)
                except (OSError, KeyError):
                    data = b""
                if not data:
                    self._drop(client)
                    continue
                time.sleep(len(data) / self.rate)

    def _pump_back(self, source: socket.socket, sink: socket.socket) -> None:
        relay(source, sink)
        self._drop(sink)  # the broker closed: so does the link, towards the client too

    def close(self) -> None:
        self._stop.set()
        self._listener.close()
        with self._lock:
            clients = list(self._towards)
        for client in clients:
            self._drop(client)
        for thread in self._threads:
            thread.join(5)

    def __enter__(self) -> SlowLink:
        return self

    def __exit__(self, *exc) -> None:
        self.close()
