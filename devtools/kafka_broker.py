"""A real single-node Apache Kafka (KRaft: broker and controller in one JVM) on 127.0.0.1, for tests and
local use.

The jars come from Maven Central via `scripts/setup_kafka.sh` (cached in ~/.cache/dfguard). `restart()` keeps
the log directory and ports, so a test can take the broker away under a running worker and bring it back.

    python -m devtools.kafka_broker --port 9092     # a local broker until Ctrl-C
"""

from __future__ import annotations

import argparse
import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
import uuid
from pathlib import Path

from devtools.servers import free_port

KAFKA_VERSION = os.environ.get("DFG_KAFKA_VERSION", "4.1.1")
KAFKA_HOME = Path(os.environ.get("DFG_KAFKA_HOME", Path.home() / ".cache/dfguard" / f"kafka-{KAFKA_VERSION}"))
REPO = Path(__file__).resolve().parent.parent

_LOG4J = """\
rootLogger.level=WARN
rootLogger.appenderRef.out.ref=OUT
appender.out.type=Console
appender.out.name=OUT
appender.out.layout.type=PatternLayout
appender.out.layout.pattern=[%d] %p %m (%c)%n
logger.kafka.name=kafka.server.KafkaRaftServer
logger.kafka.level=INFO
"""


def _libs() -> Path:
    libs = KAFKA_HOME / "libs"
    if not (KAFKA_HOME / ".complete").exists():
        subprocess.run(["bash", str(REPO / "scripts/setup_kafka.sh")], check=True)
    return libs


class KafkaBroker:
    """One broker+controller process; `bootstrap` is `127.0.0.1:<port>`."""

    def __init__(self, port: int | None = None, *, partitions: int = 4, workdir: Path | None = None) -> None:
        self.port = port or free_port()
        self.controller_port = free_port()
        self.bootstrap = f"127.0.0.1:{self.port}"
        self._own_dir = workdir is None
        self.dir = workdir or Path(tempfile.mkdtemp(prefix="dfguard-kafka-"))
        self.partitions = partitions
        self.log_path = self.dir / "broker.log"
        self._proc: subprocess.Popen[bytes] | None = None
        self._classpath = f"{_libs()}/*"
        self._write_config()
        self._format()

    def _write_config(self) -> None:
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.bootstrap.servers": f"127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name": "PLAINTEXT",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "4",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "num.partitions": str(self.partitions),
            "auto.create.topics.enable": "true",
            "log.dirs": str(self.dir / "data"),
        }
        (self.dir / "server.properties").write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        (self.dir / "log4j2.properties").write_text(_LOG4J)

    def _java(self, *args: str, heap: str = "-Xmx512m") -> list[str]:
        return [
            "java",
            heap,
            "-XX:+UseSerialGC",
            "-XX:TieredStopAtLevel=1",  # C1 only: starts in half the time, fast enough for tests
            f"-Dlog4j2.configurationFile={self.dir / 'log4j2.properties'}",
            "-cp",
            self._classpath,
            *args,
        ]

    def _format(self) -> None:
        cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        cmd = self._java(
            "kafka.tools.StorageTool", "format", "-t", cluster_id, "--standalone", heap="-Xmx256m"
        )
        for attempt in (1, 2):  # a JVM start can fail on a loaded machine; say why if it fails twice
            done = subprocess.run(
                [*cmd, "-c", str(self.dir / "server.properties")], capture_output=True, timeout=120
            )
            if done.returncode == 0:
                return
            if attempt == 2 or b"already formatted" in done.stdout + done.stderr:
                raise RuntimeError(
                    f"formatting Kafka storage failed: {(done.stdout + done.stderr)[-2000:]!r}"
                )
            shutil.rmtree(self.dir / "data", ignore_errors=True)

    def start(self, timeout: float = 90.0) -> KafkaBroker:
        log = self.log_path.open("ab")
        self._proc = subprocess.Popen(
            self._java("kafka.Kafka", str(self.dir / "server.properties")),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc.poll() is not None:
                raise RuntimeError(f"Kafka exited with {self._proc.returncode}: {self.log_tail()}")
            if b"Kafka Server started" in self.log_path.read_bytes() and self._accepts():
                return self
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"Kafka did not start within {timeout} s: {self.log_tail()}")

    def _accepts(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1):
                return True
        except OSError:
            return False

    def log_tail(self, n: int = 2000) -> str:
        return self.log_path.read_bytes()[-n:].decode(errors="replace")

    def stop(self, *, kill: bool = False, timeout: float = 30.0) -> None:
        """SIGTERM (a clean shutdown) or SIGKILL; waits for the process to go."""
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        os.killpg(proc.pid, signal.SIGKILL if kill else signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def restart(self, *, down_seconds: float = 0.0) -> None:
        self.stop()
        time.sleep(down_seconds)
        self.start()

    def close(self) -> None:
        self.stop()
        if self._own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)

    def __enter__(self) -> KafkaBroker:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="Run a local single-node Apache Kafka on 127.0.0.1.")
    parser.add_argument("--port", type=int, default=9092)
    parser.add_argument("--partitions", type=int, default=4)
    args = parser.parse_args()
    with KafkaBroker(args.port, partitions=args.partitions) as broker:
        print(
            f"Kafka {KAFKA_VERSION} on {broker.bootstrap} (data in {broker.dir}); Ctrl-C stops it", flush=True
        )
        with contextlib.suppress(KeyboardInterrupt):
            signal.pause()


if __name__ == "__main__":
    main()
