"""`check` against a real llama-server, built by .ci/run from the same llama.cpp sources as the
other references, serving the bundled model's GGUFs on the CPU.

A TCP relay between check and the server keeps every byte the server sent, so the timings check
reports can be set against the server's own, read from the wire; the relay can also stop the
server in the middle of an answer."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import threading
import time
import urllib.request
from pathlib import Path

import pytest

from tests.cli import run_cli
from tests.conftest import ROOT, need_reference

pytestmark = pytest.mark.reference


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def llama_server_binary() -> Path:
    found = os.environ.get("LLAMA_SERVER") or str(ROOT / ".ci/cache/llama-server-build/bin/llama-server")
    need_reference("llama-server (LLAMA_SERVER, built by .ci/run)", Path(found).is_file())
    return Path(found)


class Server:
    def __init__(self, binary: Path, model: Path):
        self.port = _free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen([str(binary), "-m", str(model), "--host", "127.0.0.1", "--port",
                                         str(self.port), "-c", "2048", "-t", "2", "--no-warmup"],
                                        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                with urllib.request.urlopen(self.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"llama-server did not come up on {self.url}")

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()


@pytest.fixture
def serve(llama_server_binary):
    started: list[Server] = []

    def start(model: Path) -> Server:
        started.append(Server(llama_server_binary, model))
        return started[-1]
    yield start
    for server in started:
        server.stop()


class Relay:
    """A TCP relay to a server that keeps what the server sent; `on_completion` is called once
    when the first bytes of an answer to /completion come back."""

    def __init__(self, target_port: int, on_completion=None):
        self.target, self.on_completion = target_port, on_completion
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self.received = bytearray()
        self.lock = threading.Lock()
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            upstream = socket.create_connection(("127.0.0.1", self.target))
            threading.Thread(target=self._pump, args=(client, upstream, False), daemon=True).start()
            threading.Thread(target=self._pump, args=(upstream, client, True), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, from_server: bool) -> None:
        try:
            while chunk := src.recv(65536):
                if from_server:
                    callback = None
                    with self.lock:
                        self.received += chunk
                        if b"tokens_predicted" in chunk:  # once, whichever connection sees it first
                            callback, self.on_completion = self.on_completion, None
                    if callback is not None:
                        callback()
                dst.sendall(chunk)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def timings(self) -> list[dict]:
        """Every `timings` object the server sent, in order."""
        return [json.loads(m) for m in re.findall(rb'"timings":(\{[^{}]*\})', bytes(self.received))]

    def close(self) -> None:
        self.listener.close()


def check(url: str, *args, code: int = 0):
    result = run_cli("check", url, "--runs", "3", "--tokens", "16", *args, code=code)
    return json.loads(result.stdout) if "--json" in args and code == 0 else result.output


@pytest.mark.parametrize("qtype", ["mxfp4", "q4_k_m"])
def test_check_names_the_file_its_speed_memory_and_agreement(serve, bundled_ports, qtype):
    model = bundled_ports[qtype]
    server = serve(model)
    doc = check(server.url, "--json")
    assert doc["server"]["app"] == "llama-server" and doc["server"]["ctx"] == 2048
    assert doc["file"]["name"] == str(model) and doc["file"]["experts_mxfp4"] == (qtype == "mxfp4")
    # its resident memory, found from the port, against the plan for the same file and context
    memory = doc["memory"]
    assert memory["pid"] == server.process.pid and memory["held_from"] == "resident memory (/proc)"
    assert memory["plan_bytes"] < memory["resident_bytes"] < memory["plan_bytes"] + (512 << 20)
    assert memory["reading"] == "weights as stored"
    # our runtime on the same file, fed the server's tokens
    agreement = doc["agreement"]
    assert agreement["within_bound"] and agreement["kl_topk_mean"] < agreement["kl_bound"] == 5e-3, agreement
    assert agreement["top1_agreement"] >= 0.9, agreement
    ceiling = doc["ceiling"]
    assert ceiling["bandwidth_source"] == "a read measured here" and 0 < ceiling["share_of_ceiling"] < 1
    verdict = doc["verdict"]
    assert verdict[0].startswith("file: experts MXFP4 kept" if qtype == "mxfp4" else "file: experts requantized")
    assert verdict[1].startswith("memory: holds") and "weights as stored" in verdict[1]
    assert verdict[3].startswith("computing: agrees with our runtime on this file")
    print(f"{qtype}: " + "; ".join(verdict))

    # the speeds are the server's own timings, as it sent them (read off the wire)
    relay = Relay(server.port)
    try:
        doc = check(relay.url, "--json", "--no-agreement")
        sent = relay.timings()
    finally:
        relay.close()
    assert len(sent) == 3
    runs = doc["speed"]["runs"]
    for run, timings in zip(runs, sent):
        assert run["server"]["decode_per_second"] == timings["predicted_per_second"]
        assert run["server"]["prompt_per_second"] == timings["prompt_per_second"]
        assert run["server"]["ttft_s"] == timings["prompt_ms"] / 1000
        assert run["generated"] == timings["predicted_n"] == 16
    speed = doc["speed"]
    import statistics
    assert speed["decode_per_second"]["server"] == statistics.median(t["predicted_per_second"] for t in sent)
    # and the stream's clock, which also counts HTTP, within reason of them
    server_decode, clock_decode = speed["decode_per_second"]["server"], speed["decode_per_second"]["clock"]
    assert 0.3 * server_decode < clock_decode < 1.5 * server_decode, speed
    assert speed["ttft_s"]["server"] <= speed["ttft_s"]["clock"] < speed["ttft_s"]["server"] + 0.5, speed


@pytest.fixture(scope="module")
def random_ports(checkpoints, tmp_path_factory) -> dict[str, Path]:
    """The random-weight tiny preset's lossless GGUF and Q2_K port."""
    folder = tmp_path_factory.mktemp("random-ports")
    ports = {"mxfp4": folder / "random.gguf", "q2_k": folder / "random-q2_k.gguf"}
    for qtype, out in ports.items():
        run_cli("convert", checkpoints["tiny"], "-o", out, "--type", qtype)
    return ports


def test_a_server_running_another_file_is_caught(serve, bundled_ports, random_ports):
    """The Q2_K port served, check told the lossless file: on random weights, which amplify every
    change (on the trained bundled model a Q2_K port's KL against the lossless file, 4.4e-3 over
    the top 10 and the rest, is inside the 5e-3 bound our runtime keeps against llama.cpp on one
    file, so no bound that tolerates arithmetic can tell the two apart there); and another model
    altogether served in place of the bundled one."""
    pairs = ((random_ports["q2_k"], random_ports["mxfp4"]), (random_ports["mxfp4"], bundled_ports["mxfp4"]))
    for served, told in pairs:
        server = serve(served)
        doc = check(server.url, "--json", "--file", told)
        line = next(v for v in doc["verdict"] if v.startswith("computing:"))
        assert line.startswith("computing: DISAGREES with our runtime on this file"), doc["verdict"]
        assert doc["agreement"]["kl_topk_mean"] > 10 * doc["agreement"]["kl_bound"], doc["agreement"]
        server.stop()


def test_a_server_that_stops_midway(serve, bundled_ports):
    server = serve(bundled_ports["mxfp4"])
    relay = Relay(server.port, on_completion=server.stop)
    try:
        started = time.time()
        line = check(relay.url, code=1).strip()
    finally:
        relay.close()
    assert line.startswith("Error: ") and "\n" not in line, line
    assert "midway" in line or "broke" in line or "stopped" in line, line
    assert time.time() - started < 30  # an error, not a hang
